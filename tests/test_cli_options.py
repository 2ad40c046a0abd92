"""Options every command shares: the training options declared once (train and tune take the
same ones), ``--config`` and ``--results`` on every command, and the config tables they read."""

from __future__ import annotations

import json

import pytest
import typer

from oefray.cli import app, main
from oefray.cli.common import TRAINING_OPTIONS
from oefray.config import TrainConfig
from oefray.tracking import Tracker

from .conftest import error_lines


def _commands(group=None, prefix=""):
    group = group or typer.main.get_command(app)
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


def _options(command) -> dict[str, list[str]]:
    return {p.name: p.opts + p.secondary_opts for p in command.params}


def test_train_and_tune_take_every_training_option_under_the_same_names():
    commands = dict(_commands())
    train, tune = _options(commands["train"]), _options(commands["tune"])
    fields = {f for f in TrainConfig.__dataclass_fields__}
    declared = {o.name for o in TRAINING_OPTIONS}
    assert declared <= fields  # each one sets a TrainConfig field
    # the options the issue found missing from tune are there now
    assert {"patience", "window", "anchor", "train_subjects", "test_subjects"} <= declared
    for name in declared:
        assert name in train and name in tune, name
        if name not in ("workers", "gpus"):
            assert train[name] == tune[name], name
    assert tune["workers"] == ["--workers-per-trial"] and train["workers"] == ["--workers"]
    assert tune["gpus"] == ["--gpus-per-trial", "--no-gpus-per-trial"]
    # --resume takes a value (an MLflow run id) in both, no bare flag
    for name in ("train", "tune"):
        (resume,) = [p for p in commands[name].params if p.name == "resume"]
        assert resume.opts == ["--resume"] and not resume.is_flag, name


def test_every_command_takes_config_and_results():
    names = []
    for name, command in _commands():
        opts = _options(command)
        assert opts.get("config") == ["--config"], name
        assert opts.get("results") == ["--results"], name
        names.append(name)
    assert len(names) == 14 and {
        "baseline ccm",
        "study te-shift",
        "qq",
        "submit",
        "ui",
        "verify",
    } <= set(names)


def test_simulate_reads_its_table_and_flags_override_it(tmp_path):
    config = tmp_path / "oefray.toml"
    config.write_text(
        '[simulate]\npreset = "tiny"\nsubjects = ["P3", "Q1"]\nsnr = 80.0\nseed = 3\n'
        "[train]\nepochs = 2\n"  # another command's table is ignored
    )
    out = tmp_path / "bids"
    assert main(["simulate", str(out), "--config", str(config), "--seed", "4"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["command"] == "simulate" and sorted(results["subjects"]) == ["P3", "Q1"]
    assert results["options"]["snr"] == 80.0 and results["options"]["seed"] == 4
    assert results["options"]["preset"] == "tiny"


@pytest.mark.parametrize(
    ("argv", "section"),
    [
        (["predict", "run", "ds", "--out", "o"], "predict"),
        (["baseline", "ccm", "f"], "ccm"),
        (["compare", "x"], "compare"),
        (["study", "te-shift", "ds", "--model", "m"], "study"),
        (["qq", "ds"], "qq"),
        (["preprocess", "ds", "--out", "o"], "preprocess"),
        (["train", "f"], "train"),
        (["tune", "f"], "train"),
    ],
)
def test_an_unknown_key_in_a_command_table_is_a_usage_error(argv, section, tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text(f"[{section}]\nnot_an_option = 1\n")
    assert main([*argv, "--config", str(config)]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert str(config) in line and "unknown config key(s): not_an_option" in line


def test_compare_writes_its_rows_to_results_json(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri)
    with tracker.tracked_run("cmp", run_name="a") as run:
        run.log_test_metrics({q: 1.5 for q in ("S0", "R2", "Y", "v", "chi_nb", "OEF")})
    results = tmp_path / "r.json"
    code = main(
        ["compare", run.run_id, "--tracking-uri", uri, "--format", "csv", "--results", str(results)]
    )
    assert code == 0
    payload = json.loads(results.read_text())
    assert payload["command"] == "compare" and payload["refs"] == [run.run_id]
    (row,) = payload["rows"]
    assert row["OEF"] == [1.5, None] and row["run"].startswith("a (")
    assert capsys.readouterr().out.splitlines()[1].split(",")[2] == "1.5"


def test_a_missing_config_file_is_named(tmp_path, capsys):
    missing = tmp_path / "nope.toml"
    assert main(["compare", "x", "--config", str(missing)]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert str(missing) in line and "config file not found" in line


def test_an_os_error_is_one_line_unless_debug(capsys):
    from oefray.cli import common

    def denied():
        raise PermissionError(13, "Permission denied", "/data/features")

    with pytest.raises(typer.Exit) as info:
        common.run(denied)
    assert info.value.exit_code == 1
    assert error_lines(capsys.readouterr().err) == [
        "oefray: error: /data/features: Permission denied"
    ]
    common.DEBUG.on = True
    try:
        with pytest.raises(PermissionError):
            common.run(denied)
    finally:
        common.DEBUG.on = False
    assert main(["--debug", "--version"]) == 0 and common.DEBUG.on is True
    common.DEBUG.on = False
