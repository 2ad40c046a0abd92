"""The ``oefray`` command: parse flags → config → one orchestration call → ``results.json``.

One module per group of commands: :mod:`~oefray.cli.data` (simulate, preprocess),
:mod:`~oefray.cli.training` (train, tune, evaluate), :mod:`~oefray.cli.methods` (predict,
baseline ccm, study te-shift), :mod:`~oefray.cli.tracking` (compare, report, ui),
:mod:`~oefray.cli.cluster` (submit); what they share is in :mod:`~oefray.cli.common`.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

from oefray import __version__
from oefray.cli.common import DEBUG, app, out_console

# registering the commands, in the order --help lists them
from oefray.cli import data, training, methods, tracking, cluster  # noqa: E402, F401, I001  # isort: skip

__all__ = ["app", "main"]


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks of failures (else one line).")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Also say what oefray decided on the way (files ignored ...)."
        ),
    ] = False,
) -> None:
    DEBUG.on = debug
    if verbose:
        logger = logging.getLogger("oefray")
        logger.setLevel(logging.INFO)
        for handler in logger.handlers:
            if isinstance(handler, _OneLine):
                handler.setLevel(logging.INFO)
    if version:
        out_console.print(f"oefray {__version__}")
        raise typer.Exit(0)


class _OneLine(logging.Handler):
    """oefray's own warnings (a soft mask, a participant without a folder, ...) as one
    ``oefray: warning: ...`` line each on the stderr of the moment."""

    def emit(self, record: logging.LogRecord) -> None:
        text = " ".join(record.getMessage().split())
        print(f"oefray: {record.levelname.lower()}: {text}", file=sys.stderr, flush=True)


def _warnings_to_stderr() -> None:
    logger = logging.getLogger("oefray")
    if not any(isinstance(h, _OneLine) for h in logger.handlers):
        logger.addHandler(_OneLine(logging.WARNING))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``oefray`` console script; returns the exit code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    _warnings_to_stderr()
    try:
        app(args=argv, prog_name="oefray", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
