"""An independent reference for what ``preprocess`` records in the features manifest: a subject's
row count, checksum and fit-status counts recomputed from its Parquet files (the manifest sums
them from the slabs as they are written)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from oefray.io.features import checksum, format_checksum


def checksum_subject(directory: Path) -> tuple[int, str, dict[str, int]]:
    """Row count, content checksum and fit-status counts of a subject folder, read from its files.

    Equals what ``preprocess`` recorded in the manifest (there it is summed from the slabs).
    """
    files = sorted(Path(directory).glob("part-*.parquet"))
    if not files:
        return 0, format_checksum(0), {}
    table = pa.concat_tables([pq.read_table(f) for f in files])
    codes, counts = np.unique(table["status"].to_numpy(), return_counts=True)
    status = {str(int(c)): int(n) for c, n in zip(codes, counts, strict=True)}
    return table.num_rows, format_checksum(checksum(table)), status
