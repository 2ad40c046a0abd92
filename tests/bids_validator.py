"""The schema-based BIDS validator (``bids-validator-deno``, the dev extra) run as a user runs it.

It runs offline: the wheel bundles the validator and its schema, the ``deno`` wheel the runtime.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

VALIDATOR = "bids-validator-deno"


def validator() -> str:
    """The validator's console script: beside this Python, else on ``PATH``; fails if absent."""
    beside = Path(sys.executable).parent / VALIDATOR
    found = str(beside) if beside.is_file() else shutil.which(VALIDATOR)
    if found is None:
        pytest.fail(
            f"{VALIDATOR} is not installed; it comes with the dev extra "
            "(make install, or pip install -e '.[dev]')",
            pytrace=False,
        )
    return found


def validate(dataset: Path) -> list[dict]:
    """Every issue the validator reports on ``dataset`` (its JSON output, ``--format json``)."""
    done = subprocess.run(
        [validator(), str(dataset), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"{VALIDATOR} {dataset} gave no JSON (exit {done.returncode}): "
            f"{(done.stderr or done.stdout)[-2000:]}",
            pytrace=False,
        )
    return report["issues"]["issues"]


def assert_valid(dataset: Path) -> list[dict]:
    """Fail, listing the errors, unless the validator finds none; returns the warnings."""
    issues = validate(dataset)
    errors = [i for i in issues if i.get("severity") == "error"]
    if errors:
        shown = "\n".join(
            f"  {i['code']} {i.get('subCode') or ''} {i.get('location') or ''}"
            f" {i.get('issueMessage') or ''}".rstrip()
            for i in errors[:40]
        )
        more = f"\n  ... and {len(errors) - 40} more" if len(errors) > 40 else ""
        pytest.fail(f"BIDS validator: {len(errors)} error(s) in {dataset}:\n{shown}{more}")
    return [i for i in issues if i.get("severity") == "warning"]
