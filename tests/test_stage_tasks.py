"""The stages' task lists on the local executor (``LocalExecutor.map_tasks``): decontam's
n-gram scan and assemble's token counts, one slice of the input a task, give the same files
byte for byte whether the tasks run in this process or on the executor's worker processes,
and the executor says which processes ran them. (On Ray: ``tests/test_ray_executor.py``.)

Through the public Python API (``decontaminate_files``, ``assemble``) with the executor's
``map_tasks`` as the mapper, as the stages call them.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import builder.decontam
import builder.decontam_index
from builder.assemble import assemble
from builder.decontam import decontaminate_files
from builder.run.executor import LocalExecutor, TaskLog
from builder.settings.dedup import DecontamSettings
from builder.tokens import count_tokens
from tests.support.assemble_data import make_config, make_rows
from tests.support.synthetic import Vocabulary, synthetic_corpus

SLICE = 10  # rows per task


@pytest.fixture(scope="module")
def contaminated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, set[str]]:
    """A corpus of 80 documents in row groups of 10, four of which quote a benchmark item;
    the benchmark file; the quoting documents' ids."""
    tmp = tmp_path_factory.mktemp("tasks")
    vocab = Vocabulary.make(size=3000, seed=7)
    corpus = synthetic_corpus(80, seed=3, exact_frac=0, near_frac=0, vocab=vocab, words=(60, 90))
    rng = np.random.default_rng(1)
    items = [" ".join(vocab.spellings[0, vocab.sample(rng, 40)].tolist()) for _ in range(3)]
    texts = corpus["text"].to_list()
    quoting = {5: 0, 31: 1, 32: 1, 77: 2}  # rows in three different slices
    for row, item in quoting.items():
        texts[row] = f"{texts[row]} {items[item]}"
    corpus = corpus.select("id", pl.Series("text", texts))
    source = tmp / "corpus.parquet"
    corpus.write_parquet(source, row_group_size=SLICE)
    bench = tmp / "bench.jsonl"
    bench.write_text("".join(json.dumps({"text": t}) + "\n" for t in items), encoding="utf-8")
    return source, bench, {corpus["id"][r] for r in quoting}


def _outputs(out: Path) -> dict[str, bytes]:
    names = ("clean.parquet", "hits.parquet", "rejected.parquet")
    return {name: (out / name).read_bytes() for name in names}


def _decontam(
    source: Path, bench: Path, out: Path, workers: int | None
) -> tuple[Any, dict[str, Any]]:
    """Decontaminate with the local executor's tasks (``workers``; None: no executor)."""
    settings = DecontamSettings(partition_size=SLICE, workers=1)
    log = TaskLog()
    mapper = None
    if workers is not None:
        executor = LocalExecutor(make_config({"run.workers": workers}))
        mapper = functools.partial(executor.map_tasks, where=log.add)
    result = decontaminate_files(source, [bench], out, settings, mapper=mapper)
    return result, log.to_dict()


def test_decontam_tasks_on_worker_processes_write_what_one_process_writes(
    contaminated: tuple[Path, Path, set[str]], tmp_path: Path
) -> None:
    source, bench, quoting = contaminated
    alone, _ = _decontam(source, bench, tmp_path / "alone", None)
    pooled, tasks = _decontam(source, bench, tmp_path / "pooled", 2)
    assert set(pooled.contaminated["id"]) == quoting  # rows were really removed
    assert pooled.stats.rows_out == 80 - len(quoting)
    assert _outputs(tmp_path / "pooled") == _outputs(tmp_path / "alone")
    assert pooled.stats.to_dict() | {"seconds": 0} == alone.stats.to_dict() | {"seconds": 0}
    # one task per row group, each run by one of the pool's processes, never this one
    assert tasks["count"] == 8 and tasks["nodes"] == []
    assert tasks["workers"] and os.getpid() not in tasks["workers"]


def test_decontam_tasks_in_this_process_build_the_index_once(
    contaminated: tuple[Path, Path, set[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one worker the tasks run here: the index the driver built serves all eight (a
    worker process likewise builds it on its first task and keeps it)."""
    source, bench, quoting = contaminated
    builds: list[tuple[str, ...]] = []
    real = builder.decontam_index.build_index

    def counted(files: Any, *args: Any, **kwargs: Any) -> Any:
        builds.append(tuple(map(str, files)))
        return real(files, *args, **kwargs)

    monkeypatch.setattr(builder.decontam_index, "build_index", counted)
    monkeypatch.setattr(builder.decontam, "build_index", counted)
    monkeypatch.setattr(builder.decontam_index, "_LOADED", {})
    result, tasks = _decontam(source, bench, tmp_path / "here", 1)
    assert set(result.contaminated["id"]) == quoting
    assert tasks == {"count": 8, "workers": [os.getpid()], "nodes": []}
    assert builds == [(str(bench),)]


def _run_files(run: Path) -> dict[str, Any]:
    """Shards and rejected.parquet (bytes) and the manifest but for its clock time."""
    files: dict[str, Any] = {
        str(p.relative_to(run)): p.read_bytes() for p in run.glob("**/*.parquet")
    }
    manifest = json.loads((run / "manifest.json").read_text())
    files["manifest"] = {k: v for k, v in manifest.items() if k != "created_at"}
    return files


def test_token_count_tasks_on_worker_processes_give_the_same_corpus(tmp_path: Path) -> None:
    rows = make_rows(60, seed=5)
    config = make_config(
        {"run.partition_rows": SLICE, "run.workers": 2, "output.shard_max_rows": 25}
    )
    assemble(rows, None, tmp_path / "here", config=config)  # tokens counted here
    log = TaskLog()
    mapper = functools.partial(LocalExecutor(config).map_tasks, where=log.add)
    pooled = assemble(rows, None, tmp_path / "pooled", config=config, mapper=mapper)
    assert len(pooled.shards) == 3
    assert _run_files(tmp_path / "pooled") == _run_files(tmp_path / "here")
    # the counts are cl100k's, row by row, in the shards' (id) order
    docs = pl.read_parquet(tmp_path / "pooled" / "documents" / "*.parquet")
    by_id = {r["id"]: r["text"] for r in rows}
    assert docs["n_tokens"].to_list() == count_tokens([by_id[i] for i in docs["id"]])
    assert pooled.tokens == sum(docs["n_tokens"]) > 0
    tasks = log.to_dict()
    assert tasks["count"] == 6 and tasks["nodes"] == []  # 60 sorted rows, 10 a task
    assert tasks["workers"] and os.getpid() not in tasks["workers"]
