"""``oefray tune --search``: the search-space file, and a real ASHA search on Ray Tune that is
interrupted with Ctrl-C mid-trial, resumed with ``--resume``, and whose best config trains."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from oefray.cli import main
from oefray.config import (
    SEARCHABLE,
    TrainConfig,
    default_space_path,
    load_config,
    read_search_space,
)
from oefray.errors import OefrayError
from oefray.orchestration.search import write_best_config
from oefray.orchestration.tuner import trial_config
from oefray.tracking import Tracker
from oefray.tracking.names import TUNE_STATE_TAG

from ..conftest import error_lines

# --------------------------------------------------------------------------------------------
# The space file (no Ray)
# --------------------------------------------------------------------------------------------


def test_default_space_is_valid_and_searches_what_the_issue_names():
    space = read_search_space()
    assert space.source == str(default_space_path())
    assert {"learning_rate", "lstm_units", "dense_units", "batch_size", "window", "anchor"} <= set(
        space.space
    )
    assert set(space.space) <= set(SEARCHABLE)
    assert space.scheduler == {
        "metric": "val_rmse_OEF",
        "mode": "min",
        "grace_period": 2,
        "reduction_factor": 3,
    }
    # every choice of the default space makes a valid training config
    for key, spec in space.space.items():
        for value in spec.get("choice", []):
            trial_config(TrainConfig(), {key: value})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[space]\nworkers = 2\n", "cannot vary workers"),
        ("[space]\nlearning_rate = { normal = [0, 1] }\n", "give exactly one of"),
        ("[space]\nlearning_rate = { loguniform = [0, 1] }\n", "loguniform needs low > 0"),
        ("[space]\nlearning_rate = { uniform = [1, 1] }\n", "needs [low, high] with low < high"),
        ("[space]\nbatch_size = { choice = [] }\n", "choice needs a non-empty list"),
        ("[space]\n", "at least one training option"),
        ("[space]\nwindow = 5\n[search]\nx = 1\n", "unknown table(s) ['search']"),
        ('[space]\nwindow = 5\n[scheduler]\nmetric = "test_rmse_OEF"\n', "test subjects stay held"),
        ('[space]\nwindow = 5\n[scheduler]\nmode = "low"\n', "mode must be min or max"),
        ("[space]\nwindow = 5\n[scheduler]\ngrace = 1\n", "unknown key 'grace'"),
        ('[space]\nwindow = 5\n[scheduler]\ngrace_period = "2"\n', "grace_period must be a int"),
        ("[space\n", "malformed config"),
    ],
)
def test_bad_space_files_name_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "space.toml"
    path.write_text(text)
    with pytest.raises(OefrayError) as info:
        read_search_space(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_cli_refuses_a_fixed_value_that_makes_no_valid_config(tmp_path, capsys):
    space = tmp_path / "space.toml"
    space.write_text('[space]\nanchor = "middle"\n')
    code = main(["tune", str(tmp_path), "--search", "--space", str(space), "--samples", "2"])
    assert code == 1
    err = capsys.readouterr().err
    assert str(space) in err and "anchor" in err


def test_best_config_file_is_read_back_by_train_config(tmp_path):
    sampled = {"learning_rate": 3.3e-4, "lstm_units": [32, 16], "window": 3, "anchor": "last"}
    config = trial_config(TrainConfig(epochs=7, workers=2, max_train_windows=100), sampled)
    path = write_best_config(tmp_path / "best.toml", config, sampled)
    values = tomllib.loads(path.read_text())["train"]
    assert values == {
        "preset": "small",
        "epochs": 7,
        "learning_rate": 3.3e-4,
        "lstm_units": [32, 16],
        "window": 3,
        "anchor": "last",
        "seed": 0,
    }  # where to run (workers) and the quick-run subsample are left to the command line
    again = load_config(TrainConfig, "train", path, {})
    assert (again.lstm_units, again.learning_rate, again.window, again.anchor, again.epochs) == (
        (32, 16),
        3.3e-4,
        3,
        "last",
        7,
    )


def test_resume_of_a_run_that_is_no_tune_says_so(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/m.db"
    tracker = Tracker(uri)
    with tracker.tracked_run("plain") as run:
        pass
    common = ["--storage", str(tmp_path / "rr"), "--tracking-uri", uri]
    assert main(["tune", str(tmp_path), "--search", "--resume", run.run_id, *common]) == 1
    err = capsys.readouterr().err
    assert f"MLflow run {run.run_id} is not the parent run of an oefray tune" in err
    assert main(["tune", str(tmp_path), "--search", "--resume", "0" * 32, *common]) == 1
    assert "unknown MLflow run id" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# A real search, interrupted and resumed
# --------------------------------------------------------------------------------------------

EPOCHS = 6
# Small, slow-ish epochs (batch 32) so that Ctrl-C reliably lands inside the second trial; no ASHA
# rung (grace period beyond the last epoch) so which trials finish does not depend on the draw.
SPACE = f"""
[space]
learning_rate = {{ loguniform = [3e-4, 3e-3] }}
lstm_units = {{ choice = [[16, 8], [24, 12]] }}
dense_units = [16, 8]
batch_size = 32
patience = {EPOCHS}

[scheduler]
grace_period = {EPOCHS + 1}
reduction_factor = 2
"""


def _wait_for(predicate, proc, timeout=600.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        assert proc.poll() is None, "the search ended before it could be interrupted"
        time.sleep(0.5)
    raise AssertionError("timed out")


@pytest.mark.ray
@pytest.mark.slow
def test_search_interrupted_mid_trial_resumes_and_its_best_config_trains(tiny_features, tmp_path):
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    storage = tmp_path / "ray_results"
    best = tmp_path / "best.toml"
    args = [
        "tune",
        str(tiny_features),
        "--search",
        "--samples",
        "2",
        "--space",
        str(space),
        "--epochs",
        str(EPOCHS),
        "--max-concurrent",
        "1",
        "--workers-per-trial",
        "1",
        "--experiment",
        "test-search",
        "--tracking-uri",
        uri,
        "--storage",
        str(storage),
        "--best-config",
        str(best),
        "--results",
        str(tmp_path / "results.json"),
    ]
    # stderr to a file, not a pipe: Tune's status tables (~120 KB) would fill a pipe nobody reads
    # until the end and block the search mid-trial
    log = tmp_path / "tune.err"
    with log.open("w") as err_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "oefray.cli", *args],
            env=dict(os.environ, RAY_ADDRESS=""),
            stdout=subprocess.DEVNULL,
            stderr=err_file,
        )
    tracker = Tracker(uri)

    def parent_run():
        with contextlib.suppress(OefrayError):  # the experiment may not exist yet
            for run in tracker.experiment_runs("test-search"):
                if TUNE_STATE_TAG in run.data.tags:
                    return run.info.run_id
        return None

    parent_id = _wait_for(parent_run, proc)
    state_file = Path(tracker.get_run(parent_id).data.tags[TUNE_STATE_TAG])

    def second_trial_training():
        runs = tracker.child_runs(parent_id)
        if len(runs) == 2 and len(tracker.metric_history(runs[1].info.run_id, "loss")) >= 2:
            return runs
        return None

    first, second = _wait_for(second_trial_training, proc)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=180)
    err = log.read_text()
    assert proc.returncode == 130, err[-2000:]
    assert "search interrupted with 1 of 2 trial(s) unfinished" in err
    assert f"--search --resume {parent_id}" in err
    assert tracker.get_run(parent_id).info.status == "KILLED"
    assert tracker.get_run(first.info.run_id).info.status == "FINISHED"
    assert tracker.get_run(second.info.run_id).info.status != "FINISHED"
    epochs_before = len(tracker.metric_history(second.info.run_id, "loss"))
    assert 2 <= epochs_before < EPOCHS
    assert not best.exists()  # nothing half-written

    code = main([*args, "--resume", parent_id])
    assert code == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["parent_run_id"] == parent_id and result["resumed"] is True
    parent = tracker.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    runs = tracker.child_runs(parent_id)
    # the finished trial was not run again; the interrupted one re-opened its own run and went on
    # from its Ray Train checkpoint instead of starting over
    assert [r.info.run_id for r in runs] == [first.info.run_id, second.info.run_id]
    assert all(r.info.status == "FINISHED" for r in runs)
    resumed = tracker.get_run(second.info.run_id)
    assert 1 <= int(resumed.data.tags["oefray.resumed_from_epoch"]) <= epochs_before
    assert sorted({s for s, _ in tracker.metric_history(second.info.run_id, "loss")}) == list(
        range(EPOCHS)
    )
    assert len(tracker.metric_history(first.info.run_id, "loss")) == EPOCHS

    # the best trial is the one with the lower best-epoch validation OEF RMSE
    trials = {t["run_id"]: t for t in result["trials"]}
    assert set(trials) == {first.info.run_id, second.info.run_id}
    assert all(t["completed"] for t in trials.values())
    best_id = min(trials, key=lambda r: trials[r]["val_rmse_OEF"])
    assert result["best_run_id"] == best_id
    assert parent.data.tags["oefray.best_run"] == best_id
    assert parent.data.metrics["best_val_rmse_OEF"] == pytest.approx(
        trials[best_id]["val_rmse_OEF"]
    )
    best_run = tracker.get_run(best_id)
    history = dict(tracker.metric_history(best_id, "val_rmse_OEF"))
    assert trials[best_id]["val_rmse_OEF"] == pytest.approx(
        history[int(best_run.data.tags["oefray.best_epoch"])]
    )
    # ASHA got a report after every epoch of every trial (plus the final one)
    state = json.loads(state_file.read_text())
    assert state["finished"] is True and state["parent_run_id"] == parent_id
    trial_dirs = list(Path(state["tune_path"]).glob("_trial_*"))
    assert len(trial_dirs) == 2
    for trial_dir in trial_dirs:
        rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
        done = [r["epochs_done"] for r in rows if "epochs_done" in r]
        assert done[-1] == EPOCHS and done == sorted(done)
        assert rows[-1]["completed"] == 1

    # the best config trains with `oefray train --config` and reproduces the trial's model
    code = main(
        [
            "train",
            str(tiny_features),
            "--config",
            str(best),
            "--epochs",
            "1",
            "--experiment",
            "test-search-best",
            "--tracking-uri",
            uri,
            "--storage",
            str(storage),
            "--results",
            str(tmp_path / "train.json"),
        ]
    )
    assert code == 0
    trained = tracker.get_run(json.loads((tmp_path / "train.json").read_text())["run_id"])
    for key in ("model.lstm_units", "model.learning_rate", "model.dense_units", "model.batch_size"):
        assert trained.data.params[key] == best_run.data.params[key]


def test_resume_reads_only_a_state_file_the_runner_named(tmp_path, capsys):
    """The state tag is text from the store: a tag pointing elsewhere (another file, a relative
    path, another run's state) is refused before anything is read or rewritten."""
    uri = f"sqlite:///{tmp_path}/m.db"
    tracker = Tracker(uri)
    with tracker.tracked_run("t") as run:
        pass
    victim = tmp_path / "notes.json"
    victim.write_text('{"command": "tune --search", "finished": false}')
    other = tmp_path / "oefray-tune-0123.json"
    other.write_text(json.dumps({"command": "tune --search", "parent_run_id": "0123"}))
    forged = tmp_path / f"oefray-tune-{run.run_id}.json"
    forged.write_text(json.dumps({"command": "tune --search", "parent_run_id": "0123"}))
    for tag, message in (
        (str(victim), "is not an oefray state file"),
        (f"oefray-tune-{run.run_id}.json", "is not an oefray state file"),
        (str(other), "is not an oefray state file"),
        (str(forged), f"this state file is not run {run.run_id}'s"),
    ):
        tracker.run(run.run_id).set_tags({TUNE_STATE_TAG: tag})
        args = ["tune", str(tmp_path), "--search", "--resume", run.run_id, "--tracking-uri", uri]
        assert main(args) == 1
        (line,) = error_lines(capsys.readouterr().err)
        assert message in line, line
    assert victim.read_text() == '{"command": "tune --search", "finished": false}'
