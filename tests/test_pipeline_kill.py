"""``corpus build`` killed (kill -9, Ctrl-C) at awkward moments, then rerun: the final corpus
is the same as an uninterrupted build's (same ids and texts, nothing duplicated or missing).

Builds run as subprocesses (``python -m builder build``) against the loopback fake server.
Kills land at deterministic points: ``CORPUS_FAULT=<point>:<n>`` (``builder.util.faults``)
makes the build SIGKILL itself the n-th time it passes a named point (``<point>:<n>:INT``:
SIGINT, as Ctrl-C sends), so no kill depends on how fast the machine is.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from builder.assemble import verify_run
from builder.stages import STAGES
from builder.stages.generate import read_run_generated
from tests.support.fake_openai_server import FakeOpenAIServer
from tests.support.project import ROOT, ids_and_texts, make_project, responder
from tests.support.shared import made_once

OVERRIDES: dict[str, dict[str, Any]] = {
    "llm": {"max_concurrency": 2},
    # Two subjects: a generated syllabus (arithmetic) and a failed one (algorithms, walked by
    # its topics, where the planted duplicate, contamination and truncation are).
    "walk": {"subtree": ["algorithms", "arithmetic"]},
    "generate": {"documents_per_unit": 3},
    "output": {"shard_max_rows": 5},  # several shards: more files for a kill to land between
    # Small partitions and journal flushes: several files for a kill to land between.
    "run": {"units_per_partition": 3, "flush_rows": 2, "partition_rows": 7},
}
DEADLINE_S = 120


def _env(cache: Path, fault: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORPUS_")}
    env["CORPUS_CACHE_DIR"] = str(cache)
    if fault:
        env["CORPUS_FAULT"] = fault
    return env


def generated_rows(run: Path) -> int:
    """Requests the generation stage has saved a row of so far (partitions and journal
    files; read once the build has stopped)."""
    return len(read_run_generated(run))


class Build:
    """``python -m builder build`` in a subprocess, its stderr read line by line."""

    def __init__(self, config: Path, cache: Path, fault: str | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "builder", "build", "--config", str(config), "--no-progress"],
            cwd=ROOT,
            env=_env(cache, fault),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def killed_by_fault(self) -> None:
        """Wait for the build to SIGKILL itself at its CORPUS_FAULT point."""
        self.proc.wait(DEADLINE_S)
        self._reader.join(10)
        assert self.proc.returncode == -signal.SIGKILL, "".join(self.stderr)

    def finish(self) -> tuple[int, str, str]:
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()  # (communicate() would race the stderr reader)
        self.proc.wait(DEADLINE_S)
        self._reader.join(10)
        return self.proc.returncode, out, "".join(self.stderr)


def _complete(config: Path, cache: Path) -> str:
    code, out, err = Build(config, cache).finish()
    assert code == 0, err
    assert "Traceback" not in err
    return out


@pytest.fixture
def server() -> Any:
    with FakeOpenAIServer(responder=responder, latency=0.03) as srv:
        yield srv


def _reference_build(root: Path) -> None:
    with FakeOpenAIServer(responder=responder, latency=0.03) as srv:
        config = make_project(root / "project", srv.base_url, OVERRIDES)
        out = _complete(config, root / "cache")
    (root / "stdout.txt").write_text(out, encoding="utf-8")


class Reference:
    """An uninterrupted build (own project, own server and cache): what every resumed build
    must equal. Built on first use, once per session for every worker
    (``tests.support.shared``), so the tests comparing against it need not share a worker,
    and each one's kills run before it waits for the reference."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._factory = tmp_path_factory

    @functools.cached_property
    def root(self) -> Path:
        root = made_once(self._factory, "pipeline-kill-reference", _reference_build)
        assert verify_run(root / "project" / "outputs" / "test") == []
        return root

    @property
    def stdout(self) -> str:
        return (self.root / "stdout.txt").read_text(encoding="utf-8")

    @functools.cached_property
    def docs(self) -> list[tuple[str, str]]:
        return ids_and_texts(self.root / "project" / "outputs" / "test")

    @functools.cached_property
    def rejected(self) -> list[str]:
        run = self.root / "project" / "outputs" / "test"
        return sorted(pl.read_parquet(run / "rejected.parquet")["id"].to_list())


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    return Reference(tmp_path_factory)


def _assert_same(run: Path, reference: Reference) -> None:
    assert verify_run(run) == []
    docs = ids_and_texts(run)
    assert len({i for i, _ in docs}) == len(docs)  # no duplicate
    assert docs == reference.docs  # same ids and texts, nothing missing
    rejected = sorted(pl.read_parquet(run / "rejected.parquet")["id"].to_list())
    assert rejected == reference.rejected


def test_reference_build_prints_where_everything_is(reference: Reference) -> None:
    out = reference.stdout
    for label in ("card:", "report:", "shards:", "documents:", "rejected:", "time:"):
        assert label in out
    assert len(reference.docs) > 20


def test_ctrl_c_and_kill_9_during_generation_then_resume(
    server: FakeOpenAIServer, reference: Reference, tmp_path: Path
) -> None:
    config = make_project(tmp_path / "project", server.base_url, OVERRIDES)
    cache = tmp_path / "cache"
    run = tmp_path / "project" / "outputs" / "test"

    # Ctrl-C after the second journal flush (SIGINT from a fault point, so it lands mid-
    # generation on any machine): a clean stop with exit code 130, one line, no traceback.
    build = Build(config, cache, fault="generate.journal:2:INT")
    code, _out, err = build.finish()
    assert code == 130, err
    assert "Traceback" not in err
    assert "interrupted" in err and "rerun" in err
    rows_at_stop = generated_rows(run)
    assert rows_at_stop >= 2  # two journal flushes were written before the stop

    # kill -9 of the resumed build, right after its third journal flush.
    build = Build(config, cache, fault="generate.journal:3")
    build.killed_by_fault()
    rows_at_kill = generated_rows(run)
    assert rows_at_kill > rows_at_stop
    assert not (run / "manifest.json").exists()

    server.reset_counts()
    out = _complete(config, cache)
    _assert_same(run, reference)
    assert "up to date" not in out
    # The last build did not redo what the interrupted ones had finished.
    assert rows_at_kill < generated_rows(run)
    assert server.count("chat") < len(reference.docs) + len(reference.rejected)
    assert "is up to date" in _complete(config, cache)


@pytest.fixture(scope="module")
def assembly_server() -> Any:
    """The assembly tests' server: the one their copied project's config names."""
    with FakeOpenAIServer(responder=responder, latency=0.03) as srv:
        yield srv


@pytest.fixture(scope="module")
def before_assembly(
    assembly_server: FakeOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A project (and its cache) whose build was killed right after the stage before
    assembly wrote its marker: every assembly test starts from a copy of it, so each runs
    only assembly and what follows instead of a whole build."""
    before = STAGES[STAGES.index("assemble") - 1]
    root = tmp_path_factory.mktemp("before-assembly")
    config = make_project(root / "project", assembly_server.base_url, OVERRIDES)
    Build(config, root / "cache", fault=f"stage.marked.{before}:1").killed_by_fault()
    done = root / "project" / "outputs" / "test" / "work" / "_done"
    assert (done / f"{before}.json").exists() and not (done / "assemble.json").exists()
    return root


@pytest.mark.parametrize(
    "fault",
    ["assemble.shard:1", "assemble.shard:3", "assemble.manifest:1", "stage.marked.assemble:1"],
)
def test_kill_9_during_assembly_then_resume(
    assembly_server: FakeOpenAIServer,
    before_assembly: Path,
    reference: Reference,
    tmp_path: Path,
    fault: str,
) -> None:
    """Killed after the first shard, mid-shards, after the manifest (card and report not
    written) and after assembly's marker (report not written): the rerun completes the
    same corpus and leaves no temporary file."""
    shutil.copytree(before_assembly, tmp_path, dirs_exist_ok=True)
    config = tmp_path / "project" / "corpus.toml"
    cache = tmp_path / "cache"
    run = tmp_path / "project" / "outputs" / "test"
    server = assembly_server
    server.reset_counts()
    build = Build(config, cache, fault=fault)
    build.killed_by_fault()
    assert not (run / "report.html").exists()
    if fault == "stage.marked.assemble:1":
        assert (run / "work" / "_done" / "assemble.json").exists()
    _complete(config, cache)
    _assert_same(run, reference)
    assert server.count("chat") == 0  # the stages before assembly were not redone
    assert (run / "report.html").exists()
    assert not list(run.rglob(".*.tmp*"))  # no temporary file left behind
    assert not (run / ".assemble").exists()


def test_kill_9_during_dedup_then_resume(
    server: FakeOpenAIServer, reference: Reference, tmp_path: Path
) -> None:
    config = make_project(tmp_path / "project", server.base_url, OVERRIDES)
    cache = tmp_path / "cache"
    run = tmp_path / "project" / "outputs" / "test"
    build = Build(config, cache, fault="dedup.signatures:1")
    build.killed_by_fault()
    assert (run / "work" / "_done" / "filter.json").exists()
    assert not (run / "work" / "_done" / "dedup.json").exists()
    server.reset_counts()
    out = _complete(config, cache)
    assert server.count("chat") == 0  # generation and filtering were not redone
    assert "documents:" in out
    _assert_same(run, reference)
    assert not [p for p in (run / "work" / "dedup").iterdir() if p.name.startswith(".")]
