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
    InferenceGpusOption,
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
    progress,
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
        int | None, typer.Option(help="CPUs of the local Ray runtime (preprocessing, inference).")
    ] = None,
    address: AddressOption = None,
    gpus: InferenceGpusOption = None,
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
            "gpus": gpus,
            "tracking_uri": tracking_uri,
            "force": force or None,
            **selection_overrides(acq, run_label, qsm, mask, truth, dseg, lesions),
        },
    )
    logging.getLogger("ray").setLevel(logging.WARNING)
    with progress("predict") as update:
        result = run(lambda: run_predict(model, dataset, out, options, progress=update))
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
    workers: Annotated[
        int | None, typer.Option(help="CPUs of the local Ray runtime (default: the machine's).")
    ] = None,
    address: AddressOption = None,
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
            "workers": workers,
            "address": address,
            "experiment": experiment,
            "tracking_uri": tracking_uri,
        },
    )
    logging.getLogger("ray").setLevel(logging.WARNING)
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
        int | None, typer.Option(help="CPUs of the local Ray runtime (preprocessing, inference).")
    ] = None,
    qq: Annotated[
        str | None,
        typer.Option(
            "--qq",
            help="QQ inversions re-solved at each scheme: cat, voxel, cat,voxel or none "
            "(default cat).",
        ),
    ] = None,
    experiment: ExperimentOption = None,
    tracking_uri: TrackingOption = None,
    out: Annotated[
        Path | None, typer.Option(help="Also write te_shift.csv and te_shift.md here.")
    ] = None,
    config: ConfigOption = None,
    results: ResultsOption = Path("results.json"),
) -> None:
    """Test RMSE of the LSTM, CCM, QQ and the floor when the test data come with other echo
    schemes."""
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
            "qq": None
            if qq is None
            else tuple(m.strip() for m in qq.split(",") if m.strip() and m.strip() != "none"),
            "experiment": experiment,
            "tracking_uri": tracking_uri,
        },
    )
    logging.getLogger("ray").setLevel(logging.WARNING)
    result = run(lambda: te_shift(dataset, model, options, out=out))
    write_results(results, {"command": "study te-shift", **result})
    sys.stdout.write(result["markdown"])
    say(f"run id: {result['run_id']}")


@app.command()
def qq(
    dataset: Annotated[
        Path, typer.Argument(help="BIDS dataset: multi-echo magnitudes (>= 2 echoes) and QSM.")
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Derivative to write (default DATASET/derivatives/qq-<method>)."
        ),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(help="cat (voxel solves start from cluster solutions) or voxel."),
    ] = None,
    shared: Annotated[
        str | None,
        typer.Option(
            help="With cat: the parameters a voxel takes from its cluster (default Y,v; "
            "'none' frees all five)."
        ),
    ] = None,
    oef_wb: Annotated[
        str | None,
        typer.Option(
            "--oef-wb",
            help="Whole-brain OEF prior: a fraction in (0, 1), or 'truth' (a simulated "
            "cohort's truth, said so in the output).",
        ),
    ] = None,
    sinus_mask: Annotated[
        str | None,
        typer.Option(
            help="Derivative with each scan's venous-sinus ROI (_label-sinus_mask): OEF_wb "
            "from its mean QSM."
        ),
    ] = None,
    w: Annotated[
        float | None, typer.Option("--w", help="Weight of the QSM residual (sigma_S/sigma_chi)^2.")
    ] = None,
    lam: Annotated[
        float | None,
        typer.Option("--lam", help="Weight of the OEF_wb prior (inf: the mean equals OEF_wb)."),
    ] = None,
    sample: Annotated[
        int | None, typer.Option(help="Voxels per scan for the clustering and the prior.")
    ] = None,
    subjects: Annotated[
        str | None, typer.Option(help="Comma-separated subjects or scan keys (default: all).")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="CPUs of the local Ray runtime.")] = None,
    address: AddressOption = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the sample and of k-means.")] = None,
    acq: AcqOption = None,
    run_label: RunOption = None,
    qsm: QsmOption = None,
    mask: MaskOption = None,
    dseg: DsegOption = None,
    lesions: LesionsOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Redo scans already done (only qq's files replaced).")
    ] = False,
    experiment: ExperimentOption = None,
    tracking_uri: TrackingOption = None,
    config: ConfigOption = None,
    results: OutResultsOption = None,
) -> None:
    """Reference QQ maps (QQ inversion, voxel-wise or CAT) of a dataset, for preprocess --truth."""
    from oefray.config import QQConfig
    from oefray.orchestration.qq import run_qq

    source, value = None, None
    if oef_wb is not None:
        if oef_wb.strip().lower() == "truth":
            source = "truth"
        else:
            try:
                value = float(oef_wb)
            except ValueError:
                from oefray.cli.common import USAGE, fail

                fail(f"--oef-wb: expected a fraction in (0, 1) or 'truth', got {oef_wb!r}", USAGE)
            source = "value"
    if sinus_mask is not None:
        source = "sinus"
    options = load(
        QQConfig,
        "qq",
        config,
        {
            "method": method,
            "shared": None
            if shared is None
            else tuple(p.strip() for p in shared.split(",") if p.strip() and p.strip() != "none"),
            "w": w,
            "lam": lam,
            "oef_wb": value,
            "oef_wb_source": source,
            "sinus_mask": sinus_mask,
            "sample": sample,
            "workers": workers,
            "address": address,
            "seed": seed,
            "force": force or None,
            "experiment": experiment,
            "tracking_uri": tracking_uri,
            **selection_overrides(acq, run_label, qsm, mask, None, dseg, lesions),
        },
    )
    logging.getLogger("ray").setLevel(logging.WARNING)
    result = run(lambda: run_qq(dataset, out, options, subjects=labels(subjects), progress=say))
    write_results(results or Path(result.out) / "results.json", result.to_dict())
    say(
        f"QQ maps ({options.method}) of {len(result.scans)} scan(s) in {result.out} "
        f"({len(result.completed)} done, {len(result.skipped)} already there); "
        f"use them with: oefray preprocess {dataset} --out FEATURES --truth {Path(result.out).name}"
    )
    m = result.metrics
    if "test_rmse_OEF" in m:
        say(
            f"OEF RMSE against the dataset's truth: {m['test_rmse_OEF']:.3f} % "
            f"(floor {m.get('floor_rmse_OEF', float('nan')):.3f} %)"
        )
    say(f"run id: {result.run_id}")
