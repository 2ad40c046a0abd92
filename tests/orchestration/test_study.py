"""``oefray study te-shift`` for real: the `trained` run (conftest.py) and a CCM library on the
`tiny` cohort re-simulated under other echo schemes; MLflow on sqlite."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from oefray.cli import main
from oefray.physics.constants import YA

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_te_shift_study_writes_its_table(trained, store, tiny_cohort, tmp_path, capsys):
    out = tmp_path / "study"
    code = main(
        [
            "study",
            "te-shift",
            str(tiny_cohort),
            "--model",
            trained["run_id"],
            "--clusters",
            "32",
            "--tracking-uri",
            store["uri"],
            "--experiment",
            "test-study",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    table = pd.read_csv(out / "te_shift.csv")
    assert list(table["method"]) == ["LSTM", "CCM", "floor"] * 3
    assert list(dict.fromkeys(table["scheme"])) == [
        "training scheme",
        "10 echoes from 3.0 ms every 3.8 ms",
        "9 echoes uneven 3-45 ms",
    ]
    assert np.allclose(table["OEF"], 100 * table["Y"] / YA, rtol=1e-9)
    assert (table[["S0", "R2", "Y", "v", "chi_nb"]] > 0).all().all()
    # the ground truth does not change with the echo scheme, so neither does the floor
    floor = table[table["method"] == "floor"]
    assert np.allclose(floor["Y"], floor["Y"].iloc[0], rtol=1e-12)
    printed = capsys.readouterr().out
    assert "| LSTM | 10 echoes from 3.0 ms every 3.8 ms |" in printed
    assert (out / "te_shift.md").read_text() in printed
