"""``oefray submit``: a pipeline stage as a Ray job on a cluster."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from oefray.cli.common import (
    USAGE,
    ConfigOption,
    ResultsOption,
    app,
    err_console,
    fail,
    load,
    run,
    say,
    write_results,
)

if TYPE_CHECKING:
    from oefray.orchestration.submit import SubmittedJob


@app.command()
def submit(
    spec: Annotated[
        Path, typer.Argument(help="Job spec: jobs/<stage>.yaml (entrypoint + runtime_env).")
    ],
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray job server, http://<head>:8265 (default: RAY_API_SERVER_ADDRESS, "
            "an http:// RAY_ADDRESS, or http://127.0.0.1:8265)."
        ),
    ] = None,
    follow: Annotated[
        bool | None,
        typer.Option(
            "--follow/--no-follow",
            help="Stream the job's logs and exit with its status (0 only if it SUCCEEDED); "
            "--no-follow returns once the job is submitted.",
        ),
    ] = None,
    token: Annotated[
        bool | None,
        typer.Option(
            "--token/--no-token",
            help="Send the Ray token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) "
            "with every request, an error if there is none. Without it the token goes only to a "
            "job server that answers 401 (asks for it); RAY_AUTH_MODE=token always sends it, "
            "RAY_AUTH_MODE=disabled never (--token wins over it). Also `token = true` in the "
            "config file's [submit] table.",
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="NAME=VALUE",
            help="Set an environment variable of the job (runtime_env.env_vars), e.g. "
            "--set OEFRAY_FEATURES=/mnt/shared/features; repeatable.",
        ),
    ] = None,
    config: ConfigOption = None,
    results: ResultsOption = Path("results.json"),
) -> None:
    """Run a pipeline stage as a Ray job on a cluster (jobs/<stage>.yaml)."""
    from oefray.config import SubmitConfig
    from oefray.errors import OefrayError
    from oefray.orchestration.submit import parse_overrides, read_job_spec
    from oefray.orchestration.submit import submit as submit_job

    options = load(
        SubmitConfig, "submit", config, {"address": address, "follow": follow, "token": token}
    )
    try:
        job_spec = read_job_spec(spec, parse_overrides(set_ or []))
    except OefrayError as exc:
        fail(str(exc), USAGE)
    job = run(lambda: submit_job(job_spec, options.address, token=options.token))
    err_console.print(
        f"submitted {job.submission_id} to {job.address}: {job_spec.entrypoint}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    record = {"command": "submit", "submission_id": job.submission_id, "address": job.address}
    if not options.follow:
        write_results(results, {**record, "status": "SUBMITTED"})
        say(
            f"job {job.submission_id}; follow it with: ray job logs --follow "
            f"--address {job.address} {job.submission_id}"
        )
        return
    _follow_to_the_end(job, spec, record, results)


def _follow_to_the_end(
    job: SubmittedJob, spec: Path, record: dict[str, Any], results: Path
) -> None:
    """Stream the job's logs to stdout until it ends, write ``results`` and exit with its status.

    Parameters
    ----------
    job : oefray.orchestration.submit.SubmittedJob
        The submitted job.
    spec : Path
        The job spec it came from (named in the error line).
    record : dict
        ``command``, ``submission_id`` and ``address``; the results JSON adds ``status``,
        ``message`` and ``seconds``.
    results : Path
        The results JSON to write.

    Raises
    ------
    typer.Exit
        Code 1 if the job did not succeed, 130 if following was interrupted (the job keeps
        running; nothing is written then).
    """
    from oefray.orchestration.submit import follow as follow_job

    def write(chunk: str) -> None:
        sys.stdout.write(chunk)
        sys.stdout.flush()

    try:
        outcome = follow_job(job, write)
    except KeyboardInterrupt:
        fail(
            f"stopped following {job.submission_id}; it keeps running "
            f"(ray job stop --address {job.address} {job.submission_id})",
            130,
        )
    write_results(
        results,
        {
            **record,
            "status": outcome.status,
            "message": outcome.message,
            "seconds": outcome.seconds,
        },
    )
    if not outcome.ok:
        detail = f": {outcome.message}" if outcome.message else ""
        fail(
            f"{spec}: job {job.submission_id} {outcome.status} after {outcome.seconds:.0f} s{detail}",
            1,
        )
    say(f"job {job.submission_id} SUCCEEDED in {outcome.seconds:.1f} s")
