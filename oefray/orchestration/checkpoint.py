"""A training checkpoint on disk: what Ray Train stores after every epoch, and what a restarted
or resumed training reads back.

Files of a checkpoint folder:

- ``model.weights.h5`` — the network's current weights (Keras);
- ``optimizer.npz`` — the optimizer's variables (Adam moments, iteration), in order;
- ``best_weights.npz`` — the weights of the best validation epoch so far (early stopping);
- ``state.json`` — epoch counter, best epoch and loss, patience counter, per-epoch history.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

WEIGHTS = "model.weights.h5"
BEST_WEIGHTS = "best_weights.npz"
OPTIMIZER = "optimizer.npz"
STATE = "state.json"


def new_state() -> dict[str, Any]:
    """The state of a training that has not run an epoch yet."""
    return {"epoch": 0, "best_val_loss": None, "best_epoch": -1, "wait": 0, "history": []}


def save_arrays(path: Path, arrays: list[np.ndarray]) -> None:
    """A list of arrays (weights, optimizer slots) as one ``.npz``, in order."""
    np.savez(path, *arrays)


def load_arrays(path: Path) -> list[np.ndarray]:
    """Inverse of :func:`save_arrays`."""
    with np.load(path) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def write_checkpoint(
    folder: Path, model, optimizer, best_weights: list[np.ndarray] | None, state: dict[str, Any]
) -> None:
    """Write the four checkpoint files into ``folder``."""
    model.save_weights(folder / WEIGHTS)
    save_arrays(folder / OPTIMIZER, [v.numpy() for v in optimizer.variables])
    save_arrays(folder / BEST_WEIGHTS, best_weights or model.get_weights())
    (folder / STATE).write_text(json.dumps(state))


def restore_checkpoint(folder: Path, model, optimizer) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Load weights and optimizer variables from ``folder`` into ``model`` and ``optimizer``
    (call inside the distribution strategy's scope: building the optimizer creates its slots).

    Returns
    -------
    (dict, list of arrays)
        The training state and the best weights so far.
    """
    model.load_weights(folder / WEIGHTS)
    optimizer.build(model.trainable_variables)
    for var, value in zip(optimizer.variables, load_arrays(folder / OPTIMIZER), strict=True):
        var.assign(value)
    return json.loads((folder / STATE).read_text()), load_arrays(folder / BEST_WEIGHTS)


def read_best(folder: Path) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The best weights and the final state of a finished training's checkpoint."""
    return load_arrays(folder / BEST_WEIGHTS), json.loads((folder / STATE).read_text())
