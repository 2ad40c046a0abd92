"""A trained oefray model as one versioned record: the network and what it needs to be applied.

A :class:`ModelBundle` is the Keras network plus the JSON side files that travel with it inside
the MLflow model (``model_meta/<key>.json``, written and read by :mod:`oefray.tracking`):

=================  ===========================================================================
``bundle``         ``{"format": "oefray-model", "version": 1}``
``scalers``        ``{"x": Standardizer, "y": Standardizer}`` as dicts (physical units)
``window``         ``{"length": 5, "anchor": "centre"}``
``model_config``   the :class:`oefray.ml.model.ModelConfig` dict
``targets``        ``{"names": ["Y", "v", "R2", "S0", "chi_nb"]}``
``features``       ``{"options": {"normalize": ...}, "echo_times_s": [...] or null,
                   "format_version": 2}`` (the features format it was trained on; 1 if absent)
=================  ===========================================================================

Models logged before the ``bundle`` file existed read as version 1. Only plain data is held here;
the network is an opaque object (this layer imports no Keras).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oefray.errors import FeaturesError, OefrayError
from oefray.io.manifest import COMPATIBLE_VERSIONS, FORMAT_VERSION, MANIFEST, FeaturesManifest
from oefray.ml.scaling import Standardizer
from oefray.ml.windows import WindowConfig
from oefray.physics.constants import PARAMETERS

BUNDLE_FORMAT = "oefray-model"
BUNDLE_VERSION = 1
REQUIRED_FILES: tuple[str, ...] = ("scalers", "window")


@dataclass(frozen=True)
class ModelBundle:
    """A trained network with its scalers, window, configuration and training features.

    Parameters
    ----------
    model : keras.Model
        Maps standardised windows ``(n, length, 4)`` to standardised parameters ``(n, 5)``.
    x_scaler, y_scaler : Standardizer
        Feature and target scalers fitted on the training windows.
    window : WindowConfig
        Window length and target anchor.
    model_config : dict
        The ``ModelConfig`` as a dict.
    targets : tuple of str
        Output names, in order.
    features_options : dict
        Preprocessing options of the training features (``normalize``): new data must match.
    echo_times_s : tuple of float, optional
        Echo scheme of the training features (None when subjects differed).
    features_format_version : int
        Format version of the training features (:mod:`oefray.io.manifest`).
    """

    model: Any
    x_scaler: Standardizer
    y_scaler: Standardizer
    window: WindowConfig
    model_config: dict[str, Any] = field(default_factory=dict)
    targets: tuple[str, ...] = PARAMETERS
    features_options: dict[str, Any] = field(default_factory=dict)
    echo_times_s: tuple[float, ...] | None = None
    features_format_version: int = 1

    @property
    def normalize(self) -> str:
        return str(self.features_options.get("normalize", "none"))

    def files(self) -> dict[str, dict[str, Any]]:
        """The JSON side files, by stem (see the module docstring)."""
        return {
            "bundle": {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION},
            "scalers": {"x": self.x_scaler.to_dict(), "y": self.y_scaler.to_dict()},
            "window": self.window.to_dict(),
            "model_config": dict(self.model_config),
            "targets": {"names": list(self.targets)},
            "features": {
                "options": dict(self.features_options),
                "echo_times_s": None if self.echo_times_s is None else list(self.echo_times_s),
                "format_version": self.features_format_version,
            },
        }

    def check_features(self, manifest: FeaturesManifest, root: str | Path) -> None:
        """Refuse features this model cannot be applied to: other preprocessing options (echo-1
        normalisation) or a features format whose values mean something else.

        Raises
        ------
        FeaturesError
            One line naming the features' manifest and what differs.
        """
        where = Path(root) / MANIFEST
        if manifest.options != self.features_options:
            raise FeaturesError(
                where,
                f"features made with options {manifest.options}, the model was trained on "
                f"{self.features_options}; preprocess the data with those (oefray predict does)",
            )
        versions = {self.features_format_version, FORMAT_VERSION}
        if not versions <= COMPATIBLE_VERSIONS:
            raise FeaturesError(
                where,
                f"features format version {FORMAT_VERSION}, the model was trained on version "
                f"{self.features_format_version}, whose values differ",
            )

    @classmethod
    def from_files(
        cls, model: Any, files: Mapping[str, Mapping[str, Any]], source: str
    ) -> ModelBundle:
        """The bundle of a loaded network and its side files.

        Raises
        ------
        OefrayError
            ``model <source> lacks [...]: not an oefray model``, or an unsupported version.
        """
        missing = sorted(set(REQUIRED_FILES) - set(files))
        if missing:
            raise OefrayError(None, f"model {source} lacks {missing}: not an oefray model")
        meta = files.get("bundle", {"format": BUNDLE_FORMAT, "version": 1})
        if meta.get("format") != BUNDLE_FORMAT or meta.get("version") != BUNDLE_VERSION:
            raise OefrayError(
                None,
                f"model {source} is {meta.get('format')} version {meta.get('version')}; this "
                f"oefray reads {BUNDLE_FORMAT} version {BUNDLE_VERSION}",
            )
        features = files.get("features", {})
        te = features.get("echo_times_s")
        try:
            return cls(
                model=model,
                x_scaler=Standardizer.from_dict(files["scalers"]["x"]),
                y_scaler=Standardizer.from_dict(files["scalers"]["y"]),
                window=WindowConfig(**files["window"]),
                model_config=dict(files.get("model_config", {})),
                targets=tuple(files.get("targets", {}).get("names", PARAMETERS)),
                features_options=dict(features.get("options", {})),
                echo_times_s=None if te is None else tuple(float(t) for t in te),
                features_format_version=int(features.get("format_version", 1)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise OefrayError(None, f"model {source} has malformed side files ({exc})") from None
