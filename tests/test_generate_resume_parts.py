"""The generation partitions a resumed ``corpus generate`` writes (rows read back from the
journal of a killed run, plus this run's results taken from its own journal tables) hold
the same rows, in the same order, as an uninterrupted run's, and are the very bytes that
converting those rows to a table would give."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from builder.generate import FINISHED_STATUSES
from builder.records import GENERATED_SCHEMA, decode_row, to_table
from builder.stages.generate import journal_files, read_run_generated
from builder.util.partitions import list_parts, write_table
from tests.support.fake_openai_server import FakeOpenAIServer
from tests.support.project import ROOT, make_project, responder

OVERRIDES = {
    "llm": {"max_concurrency": 2},
    "walk": {"subtree": ["algorithms", "arithmetic"]},
    "generate": {"documents_per_unit": 3},  # exercises too: evolve waves have parents
    "run": {"units_per_partition": 3, "flush_rows": 2},
}
# Columns that differ between two runs of the same work: the wall clock, and whether an
# answer came from the cache (a resumed run finds what the killed one had finished there).
VARYING = ["created_at", "cached"]


def _generate(config: Path, cache: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORPUS_")}
    env["CORPUS_CACHE_DIR"] = str(cache)
    env["PYTHONPATH"] = str(ROOT)
    if fault:
        env["CORPUS_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "builder", "generate", "--config", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# Requests a ``corpus generate`` sends besides the generation ones: the syllabus the test
# responder always answers wrongly (retried by every run), the solver's checks of answers.
NOT_GENERATION = ("You are an experienced university curriculum", "You are a careful problem")


def _system(body: dict) -> str:
    return next((m["content"] for m in body["messages"] if m["role"] == "system"), "")


def _parts(project: Path) -> list[Path]:
    return list_parts(project / "outputs" / "test" / "work" / "generate")


def test_resumed_partitions_equal_an_uninterrupted_runs(tmp_path: Path) -> None:
    srv = FakeOpenAIServer(responder=responder).start()
    try:
        ref_config = make_project(tmp_path / "ref", srv.base_url, OVERRIDES)
        done = _generate(ref_config, tmp_path / "ref-cache")
        assert done.returncode == 0, done.stderr

        config = make_project(tmp_path / "run", srv.base_url, OVERRIDES)
        killed = _generate(config, tmp_path / "cache", fault="generate.journal:3")
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        journal = tmp_path / "run" / "outputs" / "test" / "work" / "generate" / "_journal"
        assert journal_files(journal)  # the resumed run starts from a journal
        resumed = _generate(config, tmp_path / "cache")
        assert resumed.returncode == 0, resumed.stderr
    finally:
        srv.stop()

    ref_parts, parts = _parts(tmp_path / "ref"), _parts(tmp_path / "run")
    assert [p.name for p in parts] == [p.name for p in ref_parts] and len(parts) > 1
    assert not list(journal.iterdir())  # every journal was folded into its partition
    kinds = set()
    for ref, part in zip(ref_parts, parts, strict=True):
        expected = pq.read_table(ref).drop_columns(VARYING)
        got = pq.read_table(part)
        assert got.schema == GENERATED_SCHEMA
        assert got.drop_columns(VARYING).equals(expected), part.name
        kinds.update(got.column("kind").to_pylist())
        # the assembled partition is byte for byte what to_table of its rows writes
        again = tmp_path / "again" / part.name
        write_table(to_table([decode_row(r) for r in got.to_pylist()], GENERATED_SCHEMA), again)
        assert again.read_bytes() == part.read_bytes(), part.name
    assert {"section", "exercise"} <= kinds


def test_a_killed_runs_journal_is_resumed_without_resending_its_requests(
    tmp_path: Path,
) -> None:
    """The journal a ``kill -9`` left (Arrow IPC files) is read back by the next run: none
    of its finished requests is sent again, even with no LLM cache to answer them."""
    with FakeOpenAIServer(responder=responder) as srv:
        config = make_project(tmp_path / "run", srv.base_url, OVERRIDES)
        killed = _generate(config, tmp_path / "cache", fault="generate.journal:3")
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        run = tmp_path / "run" / "outputs" / "test"
        journal = run / "work" / "generate" / "_journal"
        files = journal_files(journal)
        assert [f.suffix for f in files] == [".arrow"] * 3  # one file per flush, new format
        with pa.ipc.open_file(pa.memory_map(str(files[0]))) as reader:
            assert reader.schema == GENERATED_SCHEMA
        saved = read_run_generated(run)
        finished = {rid for rid, row in saved.items() if row["status"] in FINISHED_STATUSES}
        assert len(finished) >= 6  # three flushes of two rows

        sent_before = srv.count("chat")
        srv.reset_counts()
        resumed = _generate(config, tmp_path / "no-cache")  # nothing can come from a cache
        assert resumed.returncode == 0, resumed.stderr
        asked = [b for b in srv.requests if not _system(b).startswith(NOT_GENERATION)]
    planned = len(read_run_generated(run))
    assert f"{len(finished)} already done, {planned - len(finished)} sent" in resumed.stderr
    assert len(asked) == planned - len(finished) < planned
    assert sent_before >= len(finished)
    rows = read_run_generated(run)
    assert all(rows[rid]["created_at"] == saved[rid]["created_at"] for rid in finished)
    assert not list(journal.iterdir())
