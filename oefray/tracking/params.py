"""Run parameters and tag values as MLflow stores them: flat string keys, string values, within
MLflow's size limits.

Importing this module imports no MLflow.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

# MLflow limits (mlflow.utils.validation), repeated so that importing this module stays cheap.
#: Longest param value MLflow stores, characters.
MAX_PARAM_VALUE = 6000
#: Longest tag value, characters.
MAX_TAG_VALUE = 8000
#: Longest param, tag or metric key, characters.
MAX_KEY = 250
#: Most params (or tags) in one ``log_batch`` call.
BATCH_PARAMS = 100
#: Most metrics in one ``log_batch`` call.
BATCH_METRICS = 1000
#: Longest dataset digest, characters.
MAX_DATASET_DIGEST = 36


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the last three of them ``...`` when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def param_value(value: Any) -> str:
    """A value as the string MLflow stores: strings and paths as they are, lists and tuples as
    JSON (sets sorted first), anything else through ``str``."""
    if isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
        return json.dumps(items, default=str)
    return str(value)


def tag_value(value: Any) -> str:
    """A tag value as a string (see :func:`param_value`), cut to MLflow's 8000 characters."""
    return truncate(param_value(value), MAX_TAG_VALUE)


def flatten_params(params: Mapping[str, Any], *, prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings (and dataclass instances) into MLflow params.

    Nested keys are joined with ``.`` (``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``); values become
    strings (lists/tuples as JSON), cut to MLflow's 6000 characters (ending in ``...``).

    Raises
    ------
    ValueError
        If a flattened key is longer than MLflow's 250 characters.
    """
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        if isinstance(value, Mapping):
            if value:
                out.update(flatten_params(value, prefix=f"{name}."))
            else:
                out[name] = "{}"
            continue
        if len(name) > MAX_KEY:
            raise ValueError(f"param name longer than {MAX_KEY} characters: {name[:60]}...")
        out[name] = truncate(param_value(value), MAX_PARAM_VALUE)
    return out
