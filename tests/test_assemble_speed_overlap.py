"""``assemble(..., alongside=fn)``: ``fn`` (the build's diversity summary) runs while the
token-count tasks run, after the rows are sorted and before the previous corpus is touched;
its result comes back, and an error of either side fails the assembly with the previous
corpus left whole."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from builder.assemble import assemble, read_manifest, verify_run
from builder.run.executor import LocalExecutor, TaskLog
from builder.tokens import count_tokens
from tests.support.assemble_data import make_config, make_rows

CONFIG = {"run.partition_rows": 10, "run.workers": 2, "output.shard_max_rows": 25}


def _mapper(config: Any, log: TaskLog) -> Any:
    return functools.partial(LocalExecutor(config).map_tasks, where=log.add)


def test_alongside_runs_during_assembly_and_its_result_is_returned(tmp_path: Path) -> None:
    rows = make_rows(60, seed=3)
    config = make_config(CONFIG)
    plain = assemble(rows, None, tmp_path / "plain", config=config)
    seen: list[bool] = []

    def summary() -> dict[str, int]:
        # the previous corpus is still there: the shards are written after this returns
        seen.append((tmp_path / "run" / "manifest.json").exists())
        return {"nodes": 7}

    assemble(rows, None, tmp_path / "run", config=config)
    log = TaskLog()
    result = assemble(
        rows, None, tmp_path / "run", config=config, mapper=_mapper(config, log), alongside=summary
    )
    assert result.alongside == {"nodes": 7}
    assert seen == [True]
    assert plain.alongside is None
    # the same corpus as without it, token counts from the tasks on worker processes
    assert [s.sha256 for s in result.shards] == [s.sha256 for s in plain.shards]
    docs = pl.read_parquet(tmp_path / "run" / "documents" / "*.parquet")
    by_id = {r["id"]: r["text"] for r in rows}
    assert docs["n_tokens"].to_list() == count_tokens([by_id[i] for i in docs["id"]])
    assert log.to_dict()["count"] == 6


def test_an_error_alongside_fails_the_assembly_and_keeps_the_previous_corpus(
    tmp_path: Path,
) -> None:
    rows = make_rows(40, seed=4)
    config = make_config(CONFIG)
    first = assemble(rows, None, tmp_path, config=config)

    def broken() -> None:
        raise RuntimeError("summary failed")

    with pytest.raises(RuntimeError, match="summary failed"):
        assemble(
            make_rows(30, seed=9),
            None,
            tmp_path,
            config=config,
            mapper=_mapper(config, TaskLog()),
            alongside=broken,
        )
    assert verify_run(tmp_path) == []
    assert read_manifest(tmp_path)["shards"] == [s.to_dict() for s in first.shards]
    assert not (tmp_path / ".assemble").exists()  # the scratch files are gone


def _failing_map(fn: Any, items: Any) -> Any:
    yield fn(next(iter(items)))
    raise OSError("worker lost")


def test_an_error_of_the_token_tasks_fails_the_assembly_after_alongside(tmp_path: Path) -> None:
    rows = make_rows(40, seed=5)
    config = make_config(CONFIG)
    called: list[int] = []
    with pytest.raises(OSError, match="worker lost"):
        assemble(
            rows,
            None,
            tmp_path,
            config=config,
            mapper=_failing_map,
            alongside=lambda: called.append(1),
        )
    assert called == [1]
    assert not (tmp_path / "manifest.json").exists()
