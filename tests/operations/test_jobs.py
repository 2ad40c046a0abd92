"""The shipped job specs (``jobs/*.yaml``): valid, self-contained, and each entrypoint a command
line that ``oefray`` itself accepts (parsed by the real CLI, not run)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer
import typer.core

from oefray.cli import app
from oefray.orchestration.submit import read_job_spec

REPO = Path(__file__).resolve().parents[2]
STAGES = ("preprocess", "qq", "train", "baseline-ccm", "tune-repeats", "tune-search")
_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


def test_one_spec_per_stage():
    assert sorted(p.stem for p in (REPO / "jobs").glob("*.yaml")) == sorted(STAGES)


def _argv(entrypoint: str, env: dict[str, str]) -> list[str]:
    """The entrypoint as the head's shell would split it, with the spec's env_vars."""
    return shlex.split(_VAR.sub(lambda m: env[m[1]], entrypoint))


@pytest.mark.parametrize("stage", STAGES)
def test_spec_is_valid_and_its_entrypoint_parses(stage):
    spec = read_job_spec(REPO / "jobs" / f"{stage}.yaml")
    env = spec.env_vars
    used = set(_VAR.findall(spec.entrypoint))
    # every variable of the entrypoint is declared (so --set can change it and none is unset)
    assert used and used <= set(env), used - set(env)
    # paths live on the shared storage cluster.yaml mounts, and nowhere else by default
    paths = [v for k, v in env.items() if k in used and v.startswith("/")]
    assert paths and all(p.startswith("/shared/oefray/") for p in paths)
    assert set(spec.runtime_env) == {"env_vars"}  # oefray is installed on the nodes
    assert spec.options["metadata"] == {"oefray.stage": stage}

    argv = _argv(spec.entrypoint, env)
    words = 3 if stage == "baseline-ccm" else 2  # `oefray baseline ccm`: a command of a group
    assert argv[0] == "oefray" and argv[1:words] == stage.split("-")[: words - 1]
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    with group.make_context("oefray", argv[1:], resilient_parsing=False) as ctx:
        command = group.get_command(ctx, argv[1])
        assert command is not None
        if words == 3:
            assert isinstance(command, typer.core.TyperGroup)
            ctx = command.make_context(argv[1], argv[2:], parent=ctx)
            command = command.get_command(ctx, argv[2])
            assert command is not None
        sub = command.make_context(argv[words - 1], argv[words:], parent=ctx)  # a bad flag raises
    if stage in ("train", "tune-repeats", "tune-search"):
        assert sub.params["preset"] == "paper"
        assert sub.params.get("gpus") or sub.params.get("gpus_per_trial")
        assert str(sub.params["storage"]).startswith("/shared/oefray/")
        assert str(sub.params["results"]).startswith("/shared/oefray/results/")
    if stage == "tune-repeats":
        assert sub.params["repeats"] == 5
    if stage == "tune-search":
        assert sub.params["search"] is True and sub.params["samples"] == 16
    if stage == "baseline-ccm":
        assert str(sub.params["features"]).startswith("/shared/oefray/")
        assert str(sub.params["results"]).startswith("/shared/oefray/results/")
    if stage == "qq":
        assert sub.params["method"] == "cat" and sub.params["sinus_mask"] == "sinus"


def test_a_typo_in_an_entrypoint_would_be_caught():
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    with group.make_context("oefray", ["train"]) as ctx:
        command = group.get_command(ctx, "train")
        assert command is not None
        with pytest.raises(typer.TyperException, match="No such option: --gpu"):
            command.make_context("train", ["/f", "--gpu"], parent=ctx)
