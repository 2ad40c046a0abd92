"""Write ``oefray/physics/data/fs_table.npz``, the exact f_s table used by ``oefray.physics.fs``.

Usage: ``python scripts/build_fs_table.py [--x-max 60] [--step 0.01] [--dps 30] [--out PATH]``.
Needs mpmath (a development dependency). Takes a few seconds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from oefray.physics.fs import STEP, X_MAX, build_fs_table

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "oefray" / "physics" / "data" / "fs_table.npz"


def main(args: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--x-max", type=float, default=X_MAX)
    parser.add_argument("--step", type=float, default=STEP)
    parser.add_argument("--dps", type=int, default=30, help="mpmath working precision (digits)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ns = parser.parse_args(args)
    table = build_fs_table(ns.x_max, ns.step, ns.dps)
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        ns.out, x=table["x"], f=table["f"], dfdx=table["dfdx"], x_max=np.float64(table["x_max"])
    )
    print(f"wrote {ns.out} ({table['x'].size} nodes, {ns.out.stat().st_size} bytes)")
    return ns.out


if __name__ == "__main__":
    main()
