"""Which existing folder a command may replace with ``--force``: only what oefray wrote.

An output folder of oefray carries a ``dataset_description.json`` whose ``GeneratedBy`` names
oefray (as BIDS derivatives do; :func:`mark_output` writes it). ``--force`` replaces such a
folder and nothing else: not a user's folder, not the working directory, not a folder that
contains an input of the command or lies inside one. Every refusal is one line naming the folder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from oefray.errors import OefrayError

GENERATOR = "oefray"
DESCRIPTION = "dataset_description.json"


def is_oefray_output(folder: Path) -> bool:
    """Whether ``folder`` holds a dataset description that names oefray in ``GeneratedBy``."""
    try:
        desc = json.loads((Path(folder) / DESCRIPTION).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    generated = desc.get("GeneratedBy") if isinstance(desc, dict) else None
    return isinstance(generated, list) and any(
        isinstance(g, dict) and str(g.get("Name", "")).split(" ")[0] == GENERATOR for g in generated
    )


def check_output(out: Path, *, force: bool, inputs: Sequence[Path] = ()) -> None:
    """Refuse, before any work, an output folder the command must not write or replace.

    Raises
    ------
    OefrayError
        ``OUT`` is a file; exists without ``--force``; exists, with ``--force``, but contains or
        lies inside an input, or was not written by oefray.
    """
    out = Path(out).resolve()
    if not out.exists():
        return
    if not out.is_dir():
        raise OefrayError(out, "exists and is not a folder; give a folder for the output")
    if not force:
        raise OefrayError(out, "already exists; use --force to replace it")
    for given in inputs:
        source = Path(given).resolve()
        if out == source or out in source.parents:
            raise OefrayError(out, f"holds the input {source}: not replaced, even with --force")
        if source in out.parents:
            raise OefrayError(
                out, f"lies inside the input {source}: not replaced, even with --force"
            )
    if not is_oefray_output(out):
        raise OefrayError(
            out,
            f"exists and was not written by oefray (no {DESCRIPTION} naming oefray in "
            "GeneratedBy): not replaced, even with --force",
        )


def mark_output(folder: Path, name: str, version: str) -> Path:
    """Write the description that makes ``folder`` an oefray output (a BIDS derivative)."""
    desc = {
        "Name": name,
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": GENERATOR, "Version": version}],
    }
    path = Path(folder) / DESCRIPTION
    path.write_text(json.dumps(desc, indent=2) + "\n")
    return path
