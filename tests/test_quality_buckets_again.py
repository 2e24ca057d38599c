"""``EmbeddedCorpus`` read again: the passes after the first read each bucket as the first
pass joined it (``joined/<bucket>.arrow``), so every pass yields the same rows and vectors,
also after a pass left off midway and when some embeddings are missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from builder.quality.buckets import DIVERSITY_COLUMNS, EmbeddedCorpus
from builder.util.partitions import list_parts, write_table
from tests.test_quality_streaming import _run_dir, corpus


def _pass(embedded: EmbeddedCorpus) -> list[tuple[list[int], np.ndarray | None]]:
    return [(docs["_row"].to_list(), vectors) for docs, vectors in embedded]


def test_every_pass_yields_the_first_ones_rows_and_vectors(tmp_path: Path) -> None:
    frame, x = corpus(1200)
    ctx, clean = _run_dir(tmp_path, frame, x)
    with EmbeddedCorpus(ctx, clean, DIVERSITY_COLUMNS, bucket_rows=200) as embedded:
        for docs, _vectors in embedded:  # a pass left off after its first bucket
            first = docs["_row"].to_list()
            break
        passes = [_pass(embedded) for _ in range(3)]
    assert passes[0][0][0] == first
    for rows_and_vectors in passes:
        assert [rows for rows, _ in rows_and_vectors] == [rows for rows, _ in passes[0]]
        assert sorted(r for rows, _ in rows_and_vectors for r in rows) == list(range(1200))
        for rows, vectors in rows_and_vectors:
            assert vectors is not None and np.array_equal(vectors, x[rows])


def test_a_missing_embedding_is_missing_on_every_pass(tmp_path: Path) -> None:
    frame, x = corpus(800)
    ctx, clean = _run_dir(tmp_path, frame, x)
    part = list_parts(ctx.paths.stage_dir("quality") / "embeddings")[0]
    table = pq.read_table(part)
    write_table(table.slice(1), part)  # one document without its embedding
    missing = frame["id"].to_list().index(table.column("id")[0].as_py())
    with EmbeddedCorpus(ctx, clean, DIVERSITY_COLUMNS, bucket_rows=200) as embedded:
        passes = [_pass(embedded) for _ in range(2)]
    assert [rows for rows, _ in passes[0]] == [rows for rows, _ in passes[1]]
    for rows_and_vectors in passes:
        for rows, vectors in rows_and_vectors:
            if missing in rows:
                assert vectors is None
            else:
                assert vectors is not None and np.array_equal(vectors, x[rows])
