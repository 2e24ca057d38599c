"""``builder.util.partitions.write_table``: vector columns are written plain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from builder.util.partitions import write_table


def test_vector_columns_have_no_dictionary_nor_statistics(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((50, 8)).astype(np.float32)
    table = pa.table(
        {
            "id": [f"d{i}" for i in range(50)],
            "embedding": pa.array(list(vectors), pa.list_(pa.float32())),
            "kind": ["section"] * 50,
        }
    )
    path = write_table(table, tmp_path / "part-00000.parquet")
    assert pq.read_table(path).equals(table)
    group = pq.ParquetFile(path).metadata.row_group(0)
    columns = {group.column(i).path_in_schema: group.column(i) for i in range(3)}
    vector = columns["embedding.list.element"]
    assert not vector.is_stats_set
    assert not any("DICTIONARY" in e for e in vector.encodings)
    assert columns["id"].is_stats_set and columns["kind"].is_stats_set
    assert any("DICTIONARY" in e for e in columns["kind"].encodings)
