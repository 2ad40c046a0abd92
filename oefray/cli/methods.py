"""``oefray predict``, ``oefray baseline ccm`` and ``oefray study te-shift``: a trained model on
new data, the CCM baseline, and the echo-scheme study."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from oefray.cli.common import (
    AcqOption,
    AddressOption,
    ConfigOption,
    DsegOption,
    ExperimentOption,
    LesionsOption,
    MaskOption,
    OutResultsOption,
    QsmOption,
    ResultsOption,
    RunOption,
    TrackingOption,
    TruthOption,
    app,
    labels,
    load,
    out_console,
    run,
    say,
    selection_overrides,
    table1,
    write_results,
)


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="Model URI (models:/<id>) or a training run id.")],
    dataset: Annotated[
        Path, typer.Argument(help="BIDS dataset, any echo scheme; ground truth optional.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for the NIfTI maps.")],
    workers: Annotated[
        int | None, typer.Option(help="CPUs of the local Ray runtime for preprocessing.")
    ] = None,
    address: AddressOption = None,
    tracking_uri: TrackingOption = None,
    acq: AcqOption = None,
    run_label: RunOption = None,
    qsm: QsmOption = None,
    mask: MaskOption = None,
    truth: TruthOption = None,
    dseg: DsegOption = None,
    lesions: LesionsOption = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
    config: ConfigOption = None,
    results: OutResultsOption = None,
) -> None:
    """Predict Y, v, R2, S0, chi_nb and OEF maps for new data with a trained model."""
    from oefray.config import PredictConfig
    from oefray.orchestration.predict import predict as run_predict

    options = load(
        PredictConfig,
        "predict",
        config,
        {
            "workers": workers,
            "address": address,
            "tracking_uri": tracking_uri,
            "force": force or None,
            **selection_overrides(acq, run_label, qsm, mask, truth, dseg, lesions),
        },
    )
    logging.getLogger("ray").setLevel(logging.WARNING)
    result = run(lambda: run_predict(model, dataset, out, options))
    write_results(results or Path(result.out) / "results.json", result.to_dict())
    n = sum(s["predicted"] for s in result.subjects.values())
    out_console.print(
        f"Wrote maps of {len(result.subjects)} subject(s), {n:,} voxels -> {result.out}"
    )
    if result.rmse:
        out_console.print(
            "RMSE against the dataset's ground truth: "
            + ", ".join(f"{k} {v:.4g}" for k, v in result.rmse.items())
        )


baseline_app = typer.Typer(
    help="Baselines that sit beside the LSTM in MLflow and in comparisons.", no_args_is_help=True
)
app.add_typer(baseline_app, name="baseline")


@baseline_app.command("ccm")
def baseline_ccm(
    features: Annotated[
        Path, typer.Argument(help="Features folder from oefray preprocess (with ground truth).")
    ],
    clusters: Annotated[int | None, typer.Option(help="k-means clusters of the library.")] = None,
    neighbours: Annotated[
        int | None, typer.Option(help="Nearest centroids interpolated per voxel.")
    ] = None,
    library_size: Annotated[
        int | None, typer.Option(help="Reference voxels re-simulated (seeded subsample).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the subsample and of k-means.")] = None,
    train_subjects: Annotated[
        str | None,
        typer.Option(help="Comma-separated training subjects (default: the manifest's split)."),
    ] = None,
    test_subjects: Annotated[
        str | None,
        typer.Option(help="Comma-separated test subjects (default: the manifest's split)."),
    ] = None,
    experiment: ExperimentOption = None,
    tracking_uri: TrackingOption = None,
    config: ConfigOption = None,
    results: ResultsOption = Path("results.json"),
) -> None:
    """The CCM baseline (Lee 2022): cluster library re-simulated at the data's echo times."""
    from oefray.config import CCMRunConfig
    from oefray.orchestration.baseline import run_ccm
    from oefray.reports import table_to_dict

    options = load(
        CCMRunConfig,
        "ccm",
        config,
        {
            "clusters": clusters,
            "neighbours": neighbours,
            "library_size": library_size,
            "seed": seed,
            "train_subjects": labels(train_subjects),
            "test_subjects": labels(test_subjects),
            "experiment": experiment,
            "tracking_uri": tracking_uri,
        },
    )
    out = run(lambda: run_ccm(features, options))
    table = out.pop("table")
    write_results(results, {**out, "table": table_to_dict(table)})
    t = out["test_metrics"]
    say(f"run id: {out['run_id']}  (CCM, K={out['clusters']}, k={out['neighbours']})")
    out_console.print(table1(table))
    say(
        f"test OEF RMSE {t['test_rmse_OEF']:.3f} % over all test voxels; floor {t['floor_rmse_OEF']:.3f} %"
    )


study_app = typer.Typer(help="Studies that measure the method's claims.", no_args_is_help=True)
app.add_typer(study_app, name="study")


@study_app.command("te-shift")
def study_te_shift(
    dataset: Annotated[
        Path, typer.Argument(help="BIDS dataset with ground truth and a train/test split.")
    ],
    model: Annotated[
        str, typer.Option("--model", help="Training run id (or model URI) of the LSTM.")
    ],
    snr: Annotated[
        float | None, typer.Option(help="Echo-1 SNR of the re-simulated magnitudes.")
    ] = None,
    clusters: Annotated[int | None, typer.Option(help="CCM clusters.")] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the re-simulation noise and of CCM.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="CPUs of the local Ray runtime for preprocessing.")
    ] = None,
    experiment: ExperimentOption = None,
    tracking_uri: TrackingOption = None,
    out: Annotated[
        Path | None, typer.Option(help="Also write te_shift.csv and te_shift.md here.")
    ] = None,
    config: ConfigOption = None,
    results: ResultsOption = Path("results.json"),
) -> None:
    """Test RMSE of the LSTM, CCM and the floor when the test data come with other echo schemes."""
    from oefray.config import StudyConfig
    from oefray.orchestration.study import te_shift

    options = load(
        StudyConfig,
        "study",
        config,
        {
            "snr": snr,
            "clusters": clusters,
            "seed": seed,
            "workers": workers,
            "experiment": experiment,
            "tracking_uri": tracking_uri,
        },
    )
    logging.getLogger("ray").setLevel(logging.WARNING)
    result = run(lambda: te_shift(dataset, model, options, out=out))
    write_results(results, {"command": "study te-shift", **result})
    sys.stdout.write(result["markdown"])
    say(f"run id: {result['run_id']}")
