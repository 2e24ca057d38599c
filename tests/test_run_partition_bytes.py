"""``[run] partition_mb`` bounds the output partitions of the partitioned stages (filter,
quality), not only ``[run] partition_rows``: the rows per batch come from each input file's
footer (its uncompressed bytes per row)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from builder.config import load_config
from builder.run.build import run_stages
from builder.stages import build_stages
from builder.util.partitions import list_parts
from tests.support.fake_openai_server import FakeOpenAIServer
from tests.support.project import make_project, responder

BOUND_MB = 0.004  # ~4 KB: a few generated documents


@pytest.fixture
def server() -> Any:
    with FakeOpenAIServer(responder=responder) as srv:
        yield srv


def test_tiny_partition_mb_gives_several_partitions_each_under_the_bound(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    settings = {
        "walk": {"subtree": ["algorithms", "arithmetic"]},
        "generate": {"documents_per_unit": 2},
        # Rows would allow one partition per input file; bytes must cut them smaller.
        "run": {"partition_rows": 100_000, "partition_mb": BOUND_MB},
    }
    config = load_config(make_project(tmp_path / "p", server.base_url, settings))
    # The stages up to the partitioned ones are enough: what follows reads their partitions.
    stages = build_stages()
    upto = [s.name for s in stages].index("quality") + 1
    summary = run_stages(config, stages[:upto], progress=False)
    work = summary.run_dir / "work"
    inputs = list_parts(work / "generate")
    kept = list_parts(work / "filter" / "kept")
    rows_in = summary.counters["filter"]["rows_in"]
    assert rows_in > 10
    assert len(kept) > len(inputs)  # more output partitions than input files: bytes cut them
    bound = BOUND_MB * 1024 * 1024
    graded = list_parts(work / "quality" / "kept")
    assert len(graded) > len(inputs)  # the quality stage's partitions are cut the same way
    for part in [*kept, *graded]:
        table = pq.read_table(part)
        assert table.num_rows >= 1
        assert table.nbytes <= bound, (part.name, table.nbytes, bound)
    held = summary.counters["filter"]["max_rows_held"]
    assert 1 <= held < rows_in
