"""Configuration: frozen dataclasses and named presets.

Everything a command needs is one of these objects; the CLI builds them from flags (and later a
``--config`` file) and hands them to one orchestration call.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from oefray.errors import OefrayError
from oefray.physics.echoes import validate_te

# The paper's cohort (DESIGN.md section 1.5): 8 training/validation subjects, 10 test subjects.
PAPER_TRAIN_SUBJECTS: tuple[str, ...] = ("P3", "P4", "P5", "P14", "P16", "P28", "P29", "P34")
PAPER_TEST_SUBJECTS: tuple[str, ...] = (
    "P6",
    "P11",
    "P12",
    "P13",
    "P15",
    "P17",
    "P23",
    "P26",
    "P27",
    "P31",
)
PAPER_SUBJECTS: tuple[str, ...] = PAPER_TRAIN_SUBJECTS + PAPER_TEST_SUBJECTS

#: MLflow experiment of every command that logs runs, unless told otherwise.
DEFAULT_EXPERIMENT = "oefray"

# Field of view of the phantom head in mm (x: left-right, y: anterior-posterior, z: inferior-superior).
FOV_MM: tuple[float, float, float] = (176.0, 208.0, 160.0)


@dataclass(frozen=True)
class EchoScheme:
    """Echo times of a multi-echo GRE acquisition.

    Parameters
    ----------
    te_s : tuple of float
        Echo times in seconds, in acquisition order (any spacing), rounded to 1e-12 s; at least
        2, finite, > 0 and distinct (:func:`oefray.physics.echoes.validate_te`, which raises
        the ValueError).
    """

    te_s: tuple[float, ...]

    def __post_init__(self) -> None:
        te = tuple(round(float(t), 12) for t in self.te_s)  # 4.5e-3 + 2 * 5e-3 -> 0.0145, not ...99
        validate_te(te, min_echoes=2, allow_zero=False)  # an acquisition: >= 2 echoes, all > 0
        object.__setattr__(self, "te_s", te)

    @classmethod
    def uniform(cls, te1_s: float, dte_s: float, n_echoes: int) -> EchoScheme:
        """``n_echoes`` echoes at ``te1_s + k * dte_s`` (k = 0..n_echoes-1)."""
        return cls(tuple(te1_s + k * dte_s for k in range(n_echoes)))

    @property
    def n_echoes(self) -> int:
        return len(self.te_s)


#: Default echo scheme: 8 echoes, TE1 = 4.5 ms, dTE = 5 ms (the Cornell protocol).
DEFAULT_ECHOES = EchoScheme.uniform(4.5e-3, 5.0e-3, 8)


@dataclass(frozen=True)
class CohortPreset:
    """Size of a simulated cohort: the voxel grid of every subject over ``FOV_MM``."""

    name: str
    shape: tuple[int, int, int]
    description: str

    @property
    def voxel_mm(self) -> tuple[float, float, float]:
        return tuple(f / n for f, n in zip(FOV_MM, self.shape, strict=True))  # type: ignore[return-value]


COHORT_PRESETS: dict[str, CohortPreset] = {
    p.name: p
    for p in (
        CohortPreset(
            "tiny", (20, 24, 16), "~9 mm voxels, ~2k brain voxels/subject: tests, seconds"
        ),
        CohortPreset("demo", (44, 52, 40), "4 mm voxels, ~20k brain voxels/subject: the demo"),
        CohortPreset(
            "full", (176, 208, 160), "1 mm voxels, ~1.2M brain voxels/subject: benchmarks, GPUs"
        ),
    )
}


@dataclass(frozen=True)
class SimulationConfig:
    """What ``oefray simulate`` makes.

    Parameters
    ----------
    preset : str
        Grid size, a key of ``COHORT_PRESETS``.
    subjects : tuple of str
        Subject labels (without ``sub-``). The paper's labels keep the paper's split.
    echoes : EchoScheme
        Echo times.
    snr : float
        Magnitude SNR at echo 1 inside the brain.
    qsm_noise_ppm : float
        Standard deviation of the Gaussian noise added to the QSM map (ppm).
    b0_t : float
        Field strength in tesla.
    seed : int
        Master seed; each subject's stream depends only on (seed, label).
    lesion_fraction : float
        Probability that a subject carries an infarct core with penumbra.
    """

    preset: str = "demo"
    subjects: tuple[str, ...] = PAPER_SUBJECTS
    echoes: EchoScheme = field(default_factory=lambda: DEFAULT_ECHOES)
    snr: float = 100.0
    qsm_noise_ppm: float = 0.002
    b0_t: float = 3.0
    seed: int = 0
    lesion_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.echoes, EchoScheme):  # a config file's list of seconds
            object.__setattr__(self, "echoes", EchoScheme(tuple(self.echoes)))
        object.__setattr__(self, "subjects", tuple(self.subjects))
        if self.preset not in COHORT_PRESETS:
            raise ValueError(
                f"unknown preset {self.preset!r}; choose from {sorted(COHORT_PRESETS)}"
            )
        if not self.subjects:
            raise ValueError("at least one subject is needed")
        bad = [s for s in self.subjects if not s.isalnum()]
        if bad:
            raise ValueError(f"BIDS labels must be alphanumeric, got {bad}")
        if len(set(self.subjects)) != len(self.subjects):
            raise ValueError(f"duplicate subject labels in {self.subjects}")
        if not (self.snr > 0 and math.isfinite(self.snr)):
            raise ValueError(f"snr must be positive, got {self.snr}")
        if not (self.b0_t > 0 and math.isfinite(self.b0_t)):
            raise ValueError(f"b0 must be positive (tesla), got {self.b0_t}")
        if self.qsm_noise_ppm < 0:
            raise ValueError(f"QSM noise must be >= 0 ppm, got {self.qsm_noise_ppm}")
        if not 0.0 <= self.lesion_fraction <= 1.0:
            raise ValueError(f"lesion fraction must be in [0, 1], got {self.lesion_fraction}")

    @property
    def cohort(self) -> CohortPreset:
        return COHORT_PRESETS[self.preset]


def split_of(labels: tuple[str, ...]) -> dict[str, str]:
    """Train/test split for subject labels.

    The paper's labels keep the paper's split. Other labels are assigned in order, the first
    ``round(n * 8/18)`` (at least one) to ``train`` and the rest to ``test``, so any cohort keeps
    roughly the paper's 8:10 proportion.
    """
    split = {s: "train" for s in labels if s in PAPER_TRAIN_SUBJECTS}
    split.update({s: "test" for s in labels if s in PAPER_TEST_SUBJECTS})
    others = [s for s in labels if s not in split]
    n_train = max(1, round(len(others) * len(PAPER_TRAIN_SUBJECTS) / len(PAPER_SUBJECTS)))
    for i, s in enumerate(others):
        split[s] = "train" if i < n_train else "test"
    return {s: split[s] for s in labels}


#: The fields of :class:`ScanOptions`, in order.
SCAN_OPTIONS: tuple[str, ...] = ("acq", "run", "qsm", "mask", "truth", "dseg", "lesions")


@dataclass(frozen=True)
class ScanOptions:
    """Which files of a BIDS dataset make a scan, where the dataset offers a choice (the
    options every command that reads a dataset takes: ``preprocess``, ``predict``).

    Parameters
    ----------
    acq, run : str or None
        The ``acq``/``run`` label of the magnitude echoes where a scan has several
        acquisitions (:class:`oefray.io.scans.ScanSelection`).
    qsm, mask : str or None
        The derivative (folder under ``derivatives/``) of the QSM map, and of the brain mask;
        None: the one derivative with a QSM for the scan, and the QSM's.
    truth : str
        The derivative of the ground-truth / reference maps (``qq``; absent: none).
    dseg, lesions : str or None
        The derivative of a tissue segmentation (``_dseg``) and of lesion masks
        (``_label-lesion_mask``); None: the one derivative that has them, if any.
    """

    acq: str | None = None
    run: str | None = None
    qsm: str | None = None
    mask: str | None = None
    truth: str = "qq"
    dseg: str | None = None
    lesions: str | None = None

    @property
    def selection(self):
        """Which acquisition and derivatives make a scan (:class:`oefray.io.scans.ScanSelection`)."""
        from oefray.io.scans import ScanSelection

        return ScanSelection(**self.scan_options())

    def scan_options(self) -> dict[str, str | None]:
        """The scan options by name (to hand on to another command's config)."""
        return {name: getattr(self, name) for name in SCAN_OPTIONS}


@dataclass(frozen=True)
class PreprocessConfig(ScanOptions):
    """What ``oefray preprocess`` does (and which files make a scan: :class:`ScanOptions`).

    Parameters
    ----------
    workers : int
        CPUs of the local Ray runtime, i.e. the number of slabs fitted at once. On an existing
        cluster (``address``) every CPU the cluster offers is used and this is ignored.
    slab : int
        z planes per block; bounds the memory of one task.
    normalize : str
        ``"none"`` or ``"first-echo"`` (divide every echo by echo 1, voxel-wise; ground-truth S0
        is divided the same way).
    address : str or None
        An existing Ray cluster (``ray://`` or ``host:port``); None starts a local runtime unless
        ``RAY_ADDRESS`` is set.
    force : bool
        Redo scans that are already complete.
    keep_going : bool
        Let the other scans complete when one fails (the exit code still reports it).
    """

    workers: int = 2
    slab: int = 8
    normalize: str = "none"
    address: str | None = None
    force: bool = False
    keep_going: bool = False

    def __post_init__(self) -> None:
        self.selection  # noqa: B018 - validates the labels and derivative names
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.slab < 1:
            raise ValueError(f"slab must be >= 1 z plane, got {self.slab}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(
                f"unknown normalisation {self.normalize!r}; choose from {NORMALIZATIONS}"
            )


NORMALIZATIONS: tuple[str, ...] = ("none", "first-echo")


@dataclass(frozen=True)
class TrainConfig:
    """What ``oefray train`` does (model widths and schedule come from the preset unless set).

    Parameters
    ----------
    preset : str
        ``small`` (CPU) or ``paper`` (the paper's network), see :data:`oefray.ml.model.PRESETS`.
    epochs, batch_size, learning_rate, patience : optional
        Overrides of the preset's schedule.
    lstm_units, dense_units : tuple of int, optional
        Overrides of the preset's widths.
    window, anchor : int, str
        Window length and target anchor (``centre`` or ``last``) of the ``lstm``.
    model : {"lstm", "patch"}
        ``lstm``: the paper's network over line windows (the default, unchanged); ``patch``: a
        network over the ``patch``-sided cube of voxels around each target
        (:mod:`oefray.ml.patches`, :func:`oefray.ml.model.build_patch_net`).
    patch : int
        Side of the ``patch`` model's cube (odd; 3: 27 voxels).
    oversample : int
        Repeat each training sample whose target lies in a lesion (the lesion mask, or a
        segmentation class named infarct core, penumbra or lesion) this many times (1: as the
        paper; validation and test are never resampled).
    val_fraction : float
        Share of the training subjects' windows held out for validation (seeded split).
    seed : int
        Seed of the split, the initial weights and the shuffling.
    workers : int
        Ray Train workers (data-parallel replicas).
    gpus : bool
        One GPU per worker (same code path).
    max_train_windows : int, optional
        Subsample the training windows (seeded hash, about this many) for quick runs; None uses
        all.
    cache_gb : float, optional
        Memory (GB) a training worker may hold its shard of windows in: a shard within it is
        read once and kept (fastest), a larger one is streamed from Ray Data every epoch with a
        local shuffle buffer. None: a quarter of the node's available memory per worker; 0:
        always stream.
    train_subjects, test_subjects : tuple of str, optional
        Override the split recorded in the features manifest.
    max_failures : int
        Worker failures (a killed process, a lost node) Ray Train recovers from by restarting the
        workers from the last checkpoint, in the same MLflow run; -1 retries without limit.
    experiment : str
        MLflow experiment name.
    tracking_uri : str, optional
        MLflow tracking URI (default: ``MLFLOW_TRACKING_URI`` or ``./mlruns/mlflow.db``).
    address : str, optional
        Ray cluster address (default: ``RAY_ADDRESS`` or a local runtime).
    """

    preset: str = "small"
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    patience: int | None = None
    lstm_units: tuple[int, ...] | None = None
    dense_units: tuple[int, ...] | None = None
    window: int = 5
    anchor: str = "centre"
    model: str = "lstm"
    patch: int = 3
    oversample: int = 1
    val_fraction: float = 0.2
    seed: int = 0
    workers: int = 1
    gpus: bool = False
    max_train_windows: int | None = None
    cache_gb: float | None = None
    train_subjects: tuple[str, ...] | None = None
    test_subjects: tuple[str, ...] | None = None
    max_failures: int = 2
    experiment: str = DEFAULT_EXPERIMENT
    tracking_uri: str | None = None
    address: str | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.max_failures < -1:
            raise ValueError(f"max_failures must be >= -1, got {self.max_failures}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.learning_rate is not None and not (
            math.isfinite(self.learning_rate) and self.learning_rate > 0
        ):
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.patience is not None and self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")
        if self.max_train_windows is not None and self.max_train_windows < 1:
            raise ValueError(f"max_train_windows must be >= 1, got {self.max_train_windows}")
        if self.cache_gb is not None and not (math.isfinite(self.cache_gb) and self.cache_gb >= 0):
            raise ValueError(f"cache_gb must be >= 0, got {self.cache_gb}")
        if self.oversample < 1:
            raise ValueError(f"oversample must be >= 1, got {self.oversample}")
        if self.model not in ("lstm", "patch"):
            raise ValueError(f"model must be lstm or patch, got {self.model!r}")
        self.window_config()  # raises ValueError, named

    def window_config(self):
        """The samples of the model (:class:`oefray.ml.windows.WindowConfig`)."""
        from oefray.ml.windows import WindowConfig

        if self.model == "patch":
            return WindowConfig(length=self.patch**3, anchor="centre", shape="patch")
        return WindowConfig(length=self.window, anchor=self.anchor)

    def model_overrides(self) -> dict[str, object]:
        """The preset overrides that are set, keyed as ``ModelConfig`` fields."""
        names = ("epochs", "batch_size", "learning_rate", "patience", "lstm_units", "dense_units")
        out: dict[str, object] = {
            n: getattr(self, n) for n in names if getattr(self, n) is not None
        }
        out["window"] = self.window_config().length
        out["family"] = self.model
        return out


def read_config_file(path: str | os.PathLike[str], section: str | None = None) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) configuration file.

    Keys may sit at the top level or in a table named ``section`` (e.g. ``[train]``).

    Raises
    ------
    OefrayError
        If the file is missing, malformed, or not a mapping.
    """
    import tomllib

    import yaml

    path = Path(path)
    if not path.is_file():
        raise OefrayError(path, "config file not found")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(path.read_text())
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(path.read_text())
        else:
            raise OefrayError(path, "config files are .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise OefrayError(path, f"malformed config ({' '.join(str(exc).split())})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise OefrayError(path, "a config file must hold a mapping of keys to values")
    if section is not None and isinstance(data.get(section), dict):
        data = data[section]
    return data


def config_from_mapping(
    cls: type, values: Mapping[str, Any], source: str | os.PathLike[str] | None = None
):
    """Build a frozen config dataclass from a mapping, refusing unknown keys by name.

    Lists become tuples (for fields such as ``lstm_units``).
    """

    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise OefrayError(
            source,
            f"unknown config key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}",
        )
    clean = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return cls(**clean)
    except (TypeError, ValueError) as exc:
        raise OefrayError(source, str(exc)) from None


# --------------------------------------------------------------------------------------------
# The other commands' options
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictConfig(ScanOptions):
    """What ``oefray predict`` does besides the model and the data (and which files make a
    scan: :class:`ScanOptions`).

    Parameters
    ----------
    workers : int
        CPUs of the local Ray runtime (preprocessing and inference).
    address : str, optional
        Ray cluster address (default: ``RAY_ADDRESS`` or a local runtime).
    gpus : bool
        One GPU per inference actor.
    tracking_uri : str, optional
        MLflow store holding the model.
    force : bool
        Replace the output folder if it exists.
    """

    workers: int = 2
    address: str | None = None
    gpus: bool = False
    tracking_uri: str | None = None
    force: bool = False

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        self.preprocess_config()  # validates the scan selection

    def preprocess_config(self, normalize: str = "none") -> PreprocessConfig:
        """The preprocessing step's config (normalisation: the model's)."""
        options: dict[str, Any] = self.scan_options()
        return PreprocessConfig(
            workers=self.workers, normalize=normalize, address=self.address, **options
        )


@dataclass(frozen=True)
class EvaluateConfig:
    """What ``oefray evaluate`` reads: the features (default: the run's own) and the store, and
    the Ray runtime of its batch inference.

    Parameters
    ----------
    features : str, optional
        Features folder (default: the training run's).
    tracking_uri : str, optional
        The MLflow store.
    workers : int, optional
        CPUs of the local Ray runtime (default: the machine's).
    address : str, optional
        Ray cluster address (default: ``RAY_ADDRESS`` or a local runtime).
    gpus : bool
        One GPU per inference actor.
    """

    features: str | None = None
    tracking_uri: str | None = None
    workers: int | None = None
    address: str | None = None
    gpus: bool = False

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")


@dataclass(frozen=True)
class VerifyConfig:
    """What ``oefray verify`` checks: a features folder."""

    features: str | None = None


@dataclass(frozen=True)
class CompareConfig:
    """What ``oefray compare`` prints: ``format`` (md, csv or html) from the store."""

    format: str = "md"
    tracking_uri: str | None = None

    def __post_init__(self) -> None:
        if self.format not in COMPARE_FORMATS:
            raise ValueError(
                f"unknown format {self.format!r}; choose from {', '.join(COMPARE_FORMATS)}"
            )


COMPARE_FORMATS: tuple[str, ...] = ("md", "csv", "html")


@dataclass(frozen=True)
class ReportConfig:
    """What ``oefray report`` writes: the HTML file ``out``, from the store."""

    out: str = "report.html"
    tracking_uri: str | None = None


@dataclass(frozen=True)
class UIConfig:
    """Where ``oefray ui`` serves the store: ``host`` (this machine only by default), ``port``."""

    tracking_uri: str | None = None
    host: str = "127.0.0.1"
    port: int = 5000

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")


@dataclass(frozen=True)
class SubmitConfig:
    """How ``oefray submit`` runs a job: the job server ``address`` (default: the environment's,
    else http://127.0.0.1:8265), whether to ``follow`` its logs to the end, and whether to send
    the Ray ``token`` with every request (else only to a server that answers 401)."""

    address: str | None = None
    follow: bool = True
    token: bool = False


@dataclass(frozen=True)
class CCMRunConfig:
    """What ``oefray baseline ccm`` does. Unset method options take
    :class:`oefray.ml.ccm.CCMConfig`'s defaults (the one place they are written).

    Parameters
    ----------
    clusters, neighbours, library_size, seed : optional
        The CCM library's k-means clusters, interpolated neighbours, reference voxels, seed.
    train_subjects, test_subjects : tuple of str, optional
        Override the split recorded in the features manifest.
    workers : int, optional
        CPUs of a local Ray runtime (default: the machine's).
    address : str, optional
        Ray cluster to run on (default ``RAY_ADDRESS``, else a local runtime).
    experiment, tracking_uri
        MLflow experiment and store.
    """

    clusters: int | None = None
    neighbours: int | None = None
    library_size: int | None = None
    seed: int | None = None
    train_subjects: tuple[str, ...] | None = None
    test_subjects: tuple[str, ...] | None = None
    workers: int | None = None
    address: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    tracking_uri: str | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")

    def ccm_overrides(self) -> dict[str, Any]:
        """The method options that are set, keyed as ``CCMConfig`` fields."""
        names = ("clusters", "neighbours", "library_size", "seed")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@dataclass(frozen=True)
class StudyConfig:
    """What ``oefray study te-shift`` does besides the dataset and the model.

    Parameters
    ----------
    snr : float
        Echo-1 SNR of the re-simulated magnitudes.
    qsm_noise_ppm : float
        QSM noise standard deviation of the re-simulation, ppm.
    clusters : int, optional
        CCM clusters (default: ``CCMConfig``'s).
    seed : int
        Seed of the re-simulation noise and of CCM.
    workers : int
        CPUs of the local Ray runtime for preprocessing.
    qq : tuple of str
        QQ inversions re-solved at each scheme (:data:`QQ_METHODS`: ``cat`` with the OEF_wb
        prior from the truth, ``voxel`` without a prior); ``()`` for none.
    experiment, tracking_uri
        MLflow experiment and store.
    """

    snr: float = 100.0
    qsm_noise_ppm: float = 0.002
    clusters: int | None = None
    seed: int = 0
    workers: int = 2
    qq: tuple[str, ...] = ("cat",)
    experiment: str = DEFAULT_EXPERIMENT
    tracking_uri: str | None = None

    def __post_init__(self) -> None:
        if not (self.snr > 0 and math.isfinite(self.snr)):
            raise ValueError(f"snr must be positive, got {self.snr}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        object.__setattr__(self, "qq", tuple(self.qq))
        unknown = [m for m in self.qq if m not in QQ_METHODS]
        if unknown:
            raise ValueError(f"qq: unknown QQ method(s) {unknown}; choose from {QQ_METHODS}")


#: Methods of ``oefray qq``: voxel-wise from one prior start, or CAT (cluster starts).
QQ_METHODS: tuple[str, ...] = ("voxel", "cat")


@dataclass(frozen=True)
class QQConfig(ScanOptions):
    """What ``oefray qq`` does (and which files make a scan: :class:`ScanOptions`).

    Parameters
    ----------
    method : str
        ``cat`` (the voxel-wise solve starts from each voxel's cluster solution, with the
        ``shared`` parameters fixed at the cluster's; :mod:`oefray.ml.cat`) or ``voxel`` (all
        five solved voxel by voxel from one prior start,
        :data:`oefray.orchestration.qq.PRIOR_START`).
    shared : tuple of str
        With ``cat``: the parameters a voxel takes from its cluster (default ``Y, v``: those a
        voxel's own data do not determine); ``()`` frees all five.
    w : float
        Weight of the QSM residual against the qBOLD residuals (echo-1-normalised signal):
        ``(sigma_S / sigma_chi)^2``. The default 25 is SNR 100 (sigma_S = 0.01) over 0.002 ppm
        QSM noise, the simulator's defaults; set it from your data's noise.
    lam : float
        Weight of the whole-brain prior ``lam * (mean OEF - OEF_wb)^2`` (cost units; ``inf``:
        the mean is OEF_wb exactly). Used only with an OEF_wb source; 0 leaves it out.
    oef_wb : float or None
        Whole-brain OEF, a fraction in (0, 1).
    oef_wb_source : str
        Where OEF_wb comes from: ``none``, ``value`` (``oef_wb``), ``sinus`` (the venous-sinus
        ROI ``sinus_mask``), ``truth`` (a simulated cohort's truth; said so everywhere).
    sinus_mask : str or None
        The derivative holding each scan's venous-sinus ROI (``_label-sinus_mask``).
    sample : int
        Voxels per scan drawn for the clustering and the prior's outer rounds.
    slab : int
        z planes per task.
    workers, address
        The Ray runtime (as for ``preprocess``).
    seed : int
        Seed of the sample and of k-means.
    force : bool
        Redo scans already in the output (only the files ``qq`` writes are replaced).
    experiment, tracking_uri
        MLflow experiment and store of the run.
    """

    method: str = "cat"
    shared: tuple[str, ...] = ("Y", "v")
    w: float = 25.0
    lam: float = float("inf")
    oef_wb: float | None = None
    oef_wb_source: str = "none"
    sinus_mask: str | None = None
    sample: int = 20000
    slab: int = 8
    workers: int = 2
    address: str | None = None
    seed: int = 0
    force: bool = False
    experiment: str = DEFAULT_EXPERIMENT
    tracking_uri: str | None = None

    def __post_init__(self) -> None:
        self.selection  # noqa: B018 - validates the labels and derivative names
        if self.method not in QQ_METHODS:
            raise ValueError(f"unknown QQ method {self.method!r}; choose from {QQ_METHODS}")
        if not (self.w >= 0 and math.isfinite(self.w)):
            raise ValueError(f"w must be a finite weight >= 0, got {self.w}")
        shared = tuple(self.shared)
        object.__setattr__(self, "shared", shared)
        unknown = [p for p in shared if p not in ("Y", "v", "R2", "S0", "chi_nb")]
        if unknown:
            raise ValueError(
                f"shared: unknown parameter(s) {unknown}; choose from Y, v, R2, S0, chi_nb"
            )
        if not self.lam >= 0:
            raise ValueError(f"lam must be >= 0 (or inf), got {self.lam}")
        if self.oef_wb_source not in ("none", "value", "sinus", "truth"):
            raise ValueError(f"unknown OEF_wb source {self.oef_wb_source!r}")
        if self.oef_wb is not None and not 0.0 < self.oef_wb < 1.0:
            raise ValueError(
                f"OEF_wb must be a fraction in (0, 1), got {self.oef_wb}"
                + (" (a percentage? give it as a fraction)" if 1 <= self.oef_wb < 100 else "")
            )
        if self.oef_wb_source == "value" and self.oef_wb is None:
            raise ValueError("OEF_wb source 'value' needs oef_wb")
        if self.oef_wb_source == "sinus" and not self.sinus_mask:
            raise ValueError("OEF_wb source 'sinus' needs sinus_mask")
        if self.sample < 100:
            raise ValueError(f"sample must be >= 100 voxels, got {self.sample}")
        if self.slab < 1 or self.workers < 1:
            raise ValueError(f"slab and workers must be >= 1, got {self.slab}, {self.workers}")

    @property
    def uses_prior(self) -> bool:
        """Whether the whole-brain OEF prior is part of the objective."""
        return self.oef_wb_source != "none" and self.lam > 0

    def options(self) -> dict[str, Any]:
        """What makes the maps what they are (recorded in the output; a re-run must match)."""
        return {
            "method": self.method,
            "shared": list(self.shared) if self.method == "cat" else [],
            "w": self.w,
            "lam": self.lam if math.isfinite(self.lam) else "inf",
            "oef_wb": self.oef_wb,
            "oef_wb_source": self.oef_wb_source,
            "sinus_mask": self.sinus_mask,
            "sample": self.sample,
            "seed": self.seed,
            **self.scan_options(),
        }


@dataclass(frozen=True)
class TuneConfig:
    """What ``oefray tune`` runs besides the training options of every trial.

    Parameters
    ----------
    repeats : int
        Seed repeats (the paper: 5); seeds are ``seed, seed + 1, ...``.
    samples : int
        Trials of a ``--search``.
    space : str, optional
        Search-space file (default: :func:`default_space_path`).
    max_concurrent : int, optional
        Cap on trials running at once (default: as many as resources allow).
    best_config : str
        Where a search writes its best trial's ``[train]`` TOML.
    """

    repeats: int = 5
    samples: int = 8
    space: str | None = None
    max_concurrent: int | None = None
    best_config: str = "best_config.toml"

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {self.max_concurrent}")


# --------------------------------------------------------------------------------------------
# Loading: one file, explicit overrides
# --------------------------------------------------------------------------------------------


def load_config(
    cls: type,
    section: str,
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
):
    """A config dataclass from an optional file's ``[section]`` (or its top level) and the
    overrides that are set (None values are left out: "not given on the command line").

    Raises
    ------
    OefrayError
        Naming the file: missing, malformed, an unknown key, a bad value.
    """
    values = read_config_file(path, section=section) if path is not None else {}
    values = {**values, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    return config_from_mapping(cls, values, path)


# --------------------------------------------------------------------------------------------
# Search spaces of `oefray tune --search`
# --------------------------------------------------------------------------------------------


#: Training options a search may vary (the rest say where and how to run, not what to train).
SEARCHABLE: tuple[str, ...] = (
    "preset",
    "epochs",
    "batch_size",
    "learning_rate",
    "patience",
    "lstm_units",
    "dense_units",
    "window",
    "anchor",
    "model",
    "patch",
    "oversample",
    "val_fraction",
    "max_train_windows",
    "seed",
)
DISTRIBUTIONS: tuple[str, ...] = ("loguniform", "uniform", "randint", "choice")
SCHEDULER_KEYS: dict[str, type] = {
    "metric": str,
    "mode": str,
    "grace_period": int,
    "reduction_factor": int,
}


def default_space_path() -> Path:
    """The packaged default search space (``oefray/configs/search_space.toml``)."""
    return Path(str(resources.files("oefray.configs") / "search_space.toml"))


@dataclass(frozen=True)
class SearchSpace:
    """A parsed search-space file: ``space`` maps option → spec, ``scheduler`` the ASHA knobs."""

    space: dict[str, Any]
    scheduler: dict[str, Any]
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"space": self.space, "scheduler": self.scheduler, "source": self.source}


def read_search_space(path: str | Path | None = None) -> SearchSpace:
    """Read and check a search-space file (TOML or YAML with ``[space]`` and ``[scheduler]``).

    Raises
    ------
    OefrayError
        Naming the file and the offending key: unknown options, unknown distributions, bad
        bounds, empty choices, bad scheduler values.
    """
    path = Path(path) if path is not None else default_space_path()
    data = read_config_file(path)
    unknown = sorted(set(data) - {"space", "scheduler"})
    if unknown:
        raise OefrayError(
            path, f"unknown table(s) {unknown}; a search space has [space], [scheduler]"
        )
    space = data.get("space") or {}
    if not isinstance(space, dict) or not space:
        raise OefrayError(path, "[space] must name at least one training option")
    bad = sorted(set(space) - set(SEARCHABLE))
    if bad:
        raise OefrayError(
            path, f"[space] cannot vary {', '.join(bad)}; searchable: {', '.join(SEARCHABLE)}"
        )
    for key, spec in space.items():
        if isinstance(spec, dict):
            _check_distribution(path, key, spec)
    scheduler: dict[str, Any] = {
        "metric": "val_rmse_OEF",
        "mode": "min",
        "grace_period": 2,
        "reduction_factor": 3,
    }
    given = data.get("scheduler") or {}
    if not isinstance(given, dict):
        raise OefrayError(path, "[scheduler] must be a table")
    for key, value in given.items():
        kind = SCHEDULER_KEYS.get(key)
        if kind is None:
            raise OefrayError(
                path, f"[scheduler] unknown key {key!r}; known: {', '.join(SCHEDULER_KEYS)}"
            )
        if not isinstance(value, kind) or isinstance(value, bool):
            raise OefrayError(path, f"[scheduler] {key} must be a {kind.__name__}, got {value!r}")
        scheduler[key] = value
    if scheduler["mode"] not in ("min", "max"):
        raise OefrayError(path, f"[scheduler] mode must be min or max, got {scheduler['mode']!r}")
    if scheduler["grace_period"] < 1 or scheduler["reduction_factor"] < 2:
        raise OefrayError(path, "[scheduler] needs grace_period >= 1 and reduction_factor >= 2")
    if not scheduler["metric"].startswith("val_"):
        raise OefrayError(
            path,
            f"[scheduler] metric must be a validation metric (val_*), got {scheduler['metric']!r}:"
            " the test subjects stay held out",
        )
    return SearchSpace(space=dict(space), scheduler=scheduler, source=str(path))


def _check_distribution(path: Path, key: str, spec: dict[str, Any]) -> None:
    if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise OefrayError(
            path, f"[space] {key}: give exactly one of {', '.join(DISTRIBUTIONS)}, got {spec}"
        )
    ((kind, args),) = spec.items()
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise OefrayError(path, f"[space] {key}: choice needs a non-empty list")
        return
    ok = (
        isinstance(args, list)
        and len(args) == 2
        and all(isinstance(a, int | float) and not isinstance(a, bool) for a in args)
        and all(math.isfinite(a) for a in args)
        and args[0] < args[1]
    )
    if not ok:
        raise OefrayError(path, f"[space] {key}: {kind} needs [low, high] with low < high")
    if kind == "loguniform" and args[0] <= 0:
        raise OefrayError(path, f"[space] {key}: loguniform needs low > 0")
