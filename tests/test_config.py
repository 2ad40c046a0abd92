"""Configuration (``oefray/config.py``): echo schemes, cohort presets and the split, the checks of
each frozen config, and config files read into them. The config readers' answers to bad files and
unknown or wrong keys are fuzzed in test_bad_input.py."""

from __future__ import annotations

import dataclasses
import math

import pytest

from oefray.config import (
    COHORT_PRESETS,
    DEFAULT_ECHOES,
    FOV_MM,
    PAPER_SUBJECTS,
    PAPER_TEST_SUBJECTS,
    PAPER_TRAIN_SUBJECTS,
    EchoScheme,
    PreprocessConfig,
    SimulationConfig,
    TrainConfig,
    config_from_mapping,
    read_config_file,
    split_of,
)
from oefray.errors import OefrayError

# --------------------------------------------------------------------------------------------
# Echo schemes
# --------------------------------------------------------------------------------------------


def test_uniform_echo_scheme_is_exact_to_the_picosecond():
    scheme = EchoScheme.uniform(4.5e-3, 5.0e-3, 8)
    assert scheme.n_echoes == 8
    # rounded to 1e-12 s: 4.5e-3 + 2 * 5e-3 is 0.0145 exactly, not 0.014499999999999999
    assert scheme.te_s[2] == 0.0145
    assert scheme.te_s == tuple(round(4.5e-3 + k * 5.0e-3, 12) for k in range(8))
    assert scheme == DEFAULT_ECHOES  # the Cornell protocol is the default
    assert EchoScheme([0.003, 0.001]).te_s == (0.003, 0.001)  # acquisition order, any spacing


@pytest.mark.parametrize(
    ("te_s", "message"),
    [
        ((4.5e-3,), "at least 2 echoes"),
        ((), "at least 2 echoes"),
        ((4.5e-3, 0.0), r"finite|> 0 \(seconds\)"),
        ((4.5e-3, -1e-3), r"finite|> 0 \(seconds\)"),
        ((4.5e-3, math.nan), r"finite|> 0 \(seconds\)"),
        ((4.5e-3, math.inf), r"finite|> 0 \(seconds\)"),
        ((4.5e-3, 9e-3, 4.5e-3), "distinct"),
        ((4.5e-3, 4.5e-3 + 1e-14), "distinct"),  # equal after rounding to 1e-12 s
    ],
)
def test_bad_echo_schemes_are_refused(te_s, message):
    with pytest.raises(ValueError, match=message):
        EchoScheme(te_s)


def test_configs_are_frozen():
    for config in (DEFAULT_ECHOES, SimulationConfig(), PreprocessConfig(), TrainConfig()):
        field = dataclasses.fields(config)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(config, field, None)


# --------------------------------------------------------------------------------------------
# Cohorts and the split
# --------------------------------------------------------------------------------------------


def test_cohort_presets_cover_the_field_of_view():
    assert list(COHORT_PRESETS) == ["tiny", "demo", "full"]
    for preset in COHORT_PRESETS.values():
        extent = [n * mm for n, mm in zip(preset.shape, preset.voxel_mm, strict=True)]
        assert extent == pytest.approx(FOV_MM, rel=1e-12)
    assert COHORT_PRESETS["full"].voxel_mm == (1.0, 1.0, 1.0)
    assert COHORT_PRESETS["demo"].voxel_mm == (4.0, 4.0, 4.0)


def test_simulation_config_defaults_and_checks():
    config = SimulationConfig()
    assert config.subjects == PAPER_SUBJECTS and len(PAPER_SUBJECTS) == 18
    assert config.cohort is COHORT_PRESETS["demo"] and config.echoes == DEFAULT_ECHOES
    assert SimulationConfig(preset="tiny", subjects=("X1",)).cohort.shape == (20, 24, 16)
    for bad, message in [
        ({"preset": "huge"}, "unknown preset 'huge'"),
        ({"subjects": ()}, "at least one subject"),
        ({"subjects": ("sub-P3",)}, "alphanumeric"),
        ({"subjects": ("P3", "P3")}, "duplicate subject labels"),
        ({"snr": 0.0}, "snr must be positive"),
        ({"snr": math.inf}, "snr must be positive"),
        ({"b0_t": -3.0}, "b0 must be positive"),
        ({"qsm_noise_ppm": -1e-3}, "QSM noise must be >= 0"),
        ({"lesion_fraction": 1.5}, r"lesion fraction must be in \[0, 1\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            SimulationConfig(**bad)


def test_split_keeps_the_papers_and_shares_the_rest_8_to_10():
    assert split_of(PAPER_SUBJECTS) == {
        **{s: "train" for s in PAPER_TRAIN_SUBJECTS},
        **{s: "test" for s in PAPER_TEST_SUBJECTS},
    }
    # other labels in their order: round(n * 8/18) (at least one) to train, the rest to test
    assert split_of(("X1", "X2", "X3")) == {"X1": "train", "X2": "test", "X3": "test"}
    nine = tuple(f"X{i}" for i in range(9))
    assert [split_of(nine)[s] for s in nine] == ["train"] * 4 + ["test"] * 5
    # mixed: the paper's keep theirs, the order of the labels is kept
    assert list(split_of(("Z9", "P6", "P3"))) == ["Z9", "P6", "P3"]
    assert split_of(("Z9", "P6", "P3")) == {"Z9": "train", "P6": "test", "P3": "train"}
    assert split_of(("P6", "Z9")) == {"P6": "test", "Z9": "train"}  # one other: train


# --------------------------------------------------------------------------------------------
# Preprocess and train configs
# --------------------------------------------------------------------------------------------


def test_preprocess_config_checks():
    assert PreprocessConfig() == PreprocessConfig(workers=2, slab=8, normalize="none")
    assert PreprocessConfig(normalize="first-echo").normalize == "first-echo"
    for bad, message in [
        ({"workers": 0}, "workers must be >= 1"),
        ({"slab": 0}, "slab must be >= 1"),
        ({"normalize": "zscore"}, "unknown normalisation 'zscore'"),
    ]:
        with pytest.raises(ValueError, match=message):
            PreprocessConfig(**bad)


def test_train_config_passes_only_the_overrides_that_are_set():
    assert TrainConfig().model_overrides() == {"window": 5, "family": "lstm"}
    assert TrainConfig(model="patch").model_overrides() == {"window": 27, "family": "patch"}
    config = TrainConfig(epochs=7, learning_rate=3e-4, lstm_units=(8, 4), window=3, anchor="last")
    assert config.model_overrides() == {
        "epochs": 7,
        "learning_rate": 3e-4,
        "lstm_units": (8, 4),
        "window": 3,
        "family": "lstm",
    }
    for bad, message in [
        ({"max_train_windows": 0}, "max_train_windows must be >= 1"),
        ({"max_failures": -2}, "max_failures must be >= -1"),
        ({"window": 4}, "odd"),
    ]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**bad)
    assert TrainConfig(max_failures=-1).max_failures == -1  # -1: retry without limit


# --------------------------------------------------------------------------------------------
# Config files
# --------------------------------------------------------------------------------------------


def test_toml_and_yaml_files_give_the_same_config(tmp_path):
    toml = tmp_path / "train.toml"
    toml.write_text('[train]\nepochs = 3\nlstm_units = [16, 8]\nexperiment = "x"\n')
    yaml = tmp_path / "train.yaml"
    yaml.write_text("train:\n  epochs: 3\n  lstm_units: [16, 8]\n  experiment: x\n")
    flat = tmp_path / "flat.yml"
    flat.write_text("epochs: 3\nlstm_units: [16, 8]\nexperiment: x\n")
    expected = TrainConfig(epochs=3, lstm_units=(16, 8), experiment="x")
    for path in (toml, yaml, flat):
        values = read_config_file(path, section="train")
        assert values == {"epochs": 3, "lstm_units": [16, 8], "experiment": "x"}, path
        # lists become tuples, so the frozen config compares (and hashes) as flags build it
        assert config_from_mapping(TrainConfig, values, path) == expected


def test_config_file_sections_and_empty_files(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('epochs = 2\n[search]\nmetric = "val_loss"\n')
    assert read_config_file(path) == {"epochs": 2, "search": {"metric": "val_loss"}}
    assert read_config_file(path, section="search") == {"metric": "val_loss"}
    # a section that is not there: the top level is the config
    assert read_config_file(path, section="train") == read_config_file(path)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert read_config_file(empty, section="train") == {}
    with pytest.raises(OefrayError, match="config file not found") as info:
        read_config_file(tmp_path / "nope.toml")
    assert info.value.path == str(tmp_path / "nope.toml")


def test_a_value_of_the_wrong_type_names_its_file():
    with pytest.raises(OefrayError) as info:
        config_from_mapping(TrainConfig, {"workers": "two"}, "train.toml")
    assert info.value.path == "train.toml" and "\n" not in str(info.value)
    assert config_from_mapping(PreprocessConfig, {}) == PreprocessConfig()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--batch-size", "0", "batch_size must be >= 1, got 0"),
        ("--learning-rate", "-1", "learning_rate must be positive, got -1.0"),
        ("--learning-rate", "nan", "learning_rate must be positive, got nan"),
        ("--patience", "-1", "patience must be >= 0, got -1"),
        ("--epochs", "0", "epochs must be >= 1, got 0"),
    ],
)
def test_bad_numeric_training_options_exit_2_with_one_line(flag, value, message, tmp_path, capsys):
    from oefray.cli import main

    from .conftest import error_lines

    for command in ("train", "tune"):
        assert main([command, str(tmp_path), flag, value]) == 2
        captured = capsys.readouterr()
        assert error_lines(captured.err) == [f"oefray: error: {message}"], command
        assert "Traceback" not in captured.err
