"""The LSTM regressor of QQ parameters from feature windows (DESIGN.md section 1.4), in Keras 3.

The only module of :mod:`oefray.ml` that imports Keras (and so TensorFlow). :func:`build_lstm`
returns an uncompiled model: the distributed trainer drives it with its own step, using
:func:`huber_loss` and :func:`make_optimizer`; :func:`compile_for_fit` compiles it for a plain
``model.fit`` (baselines, tests).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import keras

__all__ = [
    "ModelConfig",
    "PRESETS",
    "model_config",
    "build_lstm",
    "build_model",
    "build_patch_net",
    "huber_loss",
    "make_optimizer",
    "compile_for_fit",
]


#: Model families :func:`build_model` builds.
FAMILIES: tuple[str, ...] = ("lstm", "patch")

#: Width of the per-voxel embedding of the patch network.
PATCH_EMBEDDING = 16


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and training hyper-parameters of the LSTM model.

    Parameters
    ----------
    lstm_units : tuple of int
        Units of the stacked LSTM layers, in order (the paper: 512, 256, 128, 64).
    dense_units : tuple of int
        Units of the Dense → LayerNormalization → LeakyReLU blocks, in order.
    window : int
        Time steps per sample (window length; the paper: 5).
    n_features : int
        Features per time step (A, B, E, S).
    n_outputs : int
        Outputs (Y, v, R2, S0, chi_nb).
    leaky_relu_slope : float
        Negative slope of LeakyReLU. The paper does not state it; 0.01 is the value of the
        original leaky ReLU (Maas et al. 2013) and PyTorch's default. Keras' own layer default
        (0.3) is not used because it is not a common choice outside Keras.
    learning_rate : float
        Adam learning rate (the paper: 1e-4).
    batch_size : int
        Samples per step (the paper: 512); global across workers.
    epochs : int
        Maximum epochs (the paper: 100).
    patience : int
        Early-stopping patience on the validation loss, epochs (the paper: 10).
    huber_delta : float
        Huber loss threshold, in units of the standardised targets.
    family : {"lstm", "patch"}
        ``lstm``: the paper's network over line windows (:func:`build_lstm`); ``patch``: a
        per-voxel embedding over a 3-D patch then the same Dense blocks
        (:func:`build_patch_net`; ``lstm_units`` unused, ``window`` = voxels per patch).
    """

    lstm_units: tuple[int, ...]
    dense_units: tuple[int, ...]
    window: int = 5
    n_features: int = 4
    n_outputs: int = 5
    leaky_relu_slope: float = 0.01
    learning_rate: float = 1e-4
    batch_size: int = 512
    epochs: int = 100
    patience: int = 10
    huber_delta: float = 1.0
    family: str = "lstm"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"model family must be one of {FAMILIES}, got {self.family!r}")
        object.__setattr__(self, "lstm_units", tuple(int(u) for u in self.lstm_units))
        object.__setattr__(self, "dense_units", tuple(int(u) for u in self.dense_units))
        if not self.lstm_units:
            raise ValueError("lstm_units needs at least one layer")
        if any(u < 1 for u in self.lstm_units + self.dense_units):
            raise ValueError("layer widths must be >= 1")
        positive = ("window", "n_features", "n_outputs", "batch_size", "epochs")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")
        if not self.learning_rate > 0 or not self.huber_delta > 0:
            raise ValueError("learning_rate and huber_delta must be positive")
        if self.leaky_relu_slope < 0:
            raise ValueError(f"leaky_relu_slope must be >= 0, got {self.leaky_relu_slope}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["lstm_units"] = list(self.lstm_units)
        out["dense_units"] = list(self.dense_units)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig key(s): {', '.join(unknown)}")
        return cls(**dict(data))


#: Named configurations. ``paper``: the published architecture (LSTM 512/256/128/64, Dense blocks
#: 256/128/64 — the paper says only that the widths decrease; DESIGN.md fixes them). ``small``: the
#: same depth and layer types at about 1/20 of the parameters, for CPU runs and tests.
PRESETS: dict[str, ModelConfig] = {
    "paper": ModelConfig(lstm_units=(512, 256, 128, 64), dense_units=(256, 128, 64)),
    "small": ModelConfig(lstm_units=(64, 48, 32, 16), dense_units=(64, 32, 16)),
}


def model_config(preset: str, **overrides: Any) -> ModelConfig:
    """A preset with explicit overrides, e.g. ``model_config("small", learning_rate=1e-3)``.

    Raises
    ------
    ValueError
        If the preset or an override name is unknown, or the result is invalid.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown ModelConfig field(s): {', '.join(unknown)}")
    return dataclasses.replace(PRESETS[preset], **overrides)


def build_model(config: ModelConfig) -> keras.Model:
    """The network of ``config.family``: :func:`build_lstm` or :func:`build_patch_net`."""
    return build_patch_net(config) if config.family == "patch" else build_lstm(config)


def _dense_blocks(h, config: ModelConfig):
    for i, units in enumerate(config.dense_units, start=1):
        # Normalise before the nonlinearity (the paper's Dense → LayerNorm → LeakyReLU order).
        h = keras.layers.Dense(units, name=f"dense_{i}")(h)
        h = keras.layers.LayerNormalization(name=f"layer_norm_{i}")(h)
        h = keras.layers.LeakyReLU(negative_slope=config.leaky_relu_slope, name=f"leaky_relu_{i}")(
            h
        )
    return keras.layers.Dense(config.n_outputs, name="output")(h)


def build_patch_net(config: ModelConfig) -> keras.Model:
    """A network over 3-D patches (:mod:`oefray.ml.patches`), uncompiled.

    Layers::

        windows        Input (window, n_features): the patch's voxels in C order of offsets
        embed          Dense(PATCH_EMBEDDING) on every voxel, shared (one 1x1x1 convolution)
        embed_act      LeakyReLU(slope)
        flatten        Flatten: each position keeps its own weights next (where in the cube)
        dense_i ...    the Dense → LayerNormalization → LeakyReLU blocks of ``dense_units``
        output         Dense(n_outputs), linear

    Parameters
    ----------
    config : ModelConfig
        ``family`` "patch"; ``window`` the voxels per patch (27 for 3x3x3).
    """
    inputs = keras.Input(shape=(config.window, config.n_features), name="windows")
    h = keras.layers.Dense(PATCH_EMBEDDING, name="embed")(inputs)
    h = keras.layers.LeakyReLU(negative_slope=config.leaky_relu_slope, name="embed_act")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    return keras.Model(inputs, _dense_blocks(h, config), name="oefray_patch")


def build_lstm(config: ModelConfig) -> keras.Model:
    """The LSTM model of the paper (Fig. 2), uncompiled.

    Layers, with stable names::

        windows           Input (window, n_features)
        lstm_1 .. lstm_K  LSTM(units, tanh); all but lstm_K return sequences
        flatten           Flatten
        dense_i           Dense(units)            } for i = 1 .. D
        layer_norm_i      LayerNormalization      }
        leaky_relu_i      LeakyReLU(slope)        }
        output            Dense(n_outputs), linear

    Parameters
    ----------
    config : ModelConfig

    Returns
    -------
    keras.Model
        Maps (batch, window, n_features) standardised features to (batch, n_outputs)
        standardised parameters. Weights come from Keras' initialisers, so seed them with
        ``keras.utils.set_random_seed`` before building for reproducible runs.
    """
    inputs = keras.Input(shape=(config.window, config.n_features), name="windows")
    h = inputs
    last = len(config.lstm_units)
    for i, units in enumerate(config.lstm_units, start=1):
        h = keras.layers.LSTM(
            units, activation="tanh", return_sequences=i < last, name=f"lstm_{i}"
        )(h)
    h = keras.layers.Flatten(name="flatten")(h)
    return keras.Model(inputs, _dense_blocks(h, config), name="oefray_lstm")


def huber_loss(
    config: ModelConfig, *, reduction: str | None = "sum_over_batch_size"
) -> keras.losses.Huber:
    """The paper's Huber loss with threshold ``config.huber_delta``.

    Parameters
    ----------
    config : ModelConfig
    reduction : str or None
        Keras reduction. The default averages over the batch (for ``model.fit``). A custom
        distributed step should pass ``"none"``: calling the loss then returns per-sample losses
        of shape (batch,) (each the mean over the n_outputs outputs), to be summed and divided by
        the *global* batch size so that every worker's gradient has the right weight.

    Returns
    -------
    keras.losses.Huber
    """
    return keras.losses.Huber(delta=config.huber_delta, reduction=reduction)


def make_optimizer(config: ModelConfig) -> keras.optimizers.Optimizer:
    """A fresh Adam optimiser with ``config.learning_rate`` (Keras defaults otherwise)."""
    return keras.optimizers.Adam(learning_rate=config.learning_rate)


def compile_for_fit(model: keras.Model, config: ModelConfig) -> keras.Model:
    """Compile `model` in place with Adam and the Huber loss for plain ``model.fit``; returns it."""
    model.compile(optimizer=make_optimizer(config), loss=huber_loss(config))
    return model
