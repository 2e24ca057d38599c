"""``corpus build`` killed (kill -9, Ctrl-C) at awkward moments, then rerun: the final corpus
is the same as an uninterrupted build's (same ids and texts, nothing duplicated or missing).

Builds run as subprocesses (``python -m builder build``) against the loopback fake server,
which runs in the test process and answers slowly enough to be caught mid-generation.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from builder.assemble import verify_run
from tests.support.fake_openai_server import FakeOpenAIServer
from tests.test_pipeline_helpers import ROOT, ids_and_texts, make_project, responder

OVERRIDES: dict[str, dict[str, Any]] = {
    "llm": {"max_concurrency": 2},
    # Two subjects: a generated syllabus (arithmetic) and a failed one (algorithms, walked by
    # its topics, where the planted duplicate, contamination and truncation are).
    "walk": {"subtree": ["algorithms", "arithmetic"]},
    "generate": {"documents_per_unit": 3},
    "output": {"shard_max_rows": 5},  # several shards: more files for a kill to land between
}
DEADLINE_S = 120


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORPUS_")}
    env["CORPUS_CACHE_DIR"] = str(cache)
    return env


class Build:
    """``python -m builder build`` in a subprocess, its stderr read line by line."""

    def __init__(self, config: Path, cache: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "builder", "build", "--config", str(config), "--no-progress"],
            cwd=ROOT,
            env=_env(cache),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_line(self, text: str, timeout: float = DEADLINE_S) -> bool:
        """True once a stderr line contains ``text``; False if the process ended first."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = self.lines.get(timeout=0.05)
            except queue.Empty:
                continue
            if line is None:
                return False
            if text in line:
                return True
        raise AssertionError(f"no {text!r} within {timeout} s; stderr: {''.join(self.stderr)}")

    def wait_for_rows(self, path: Path, rows: int, timeout: float = DEADLINE_S) -> None:
        """Wait until the JSONL file at ``path`` has at least ``rows`` lines."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if path.exists() and path.read_bytes().count(b"\n") >= rows:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"build ended before {rows} rows: {''.join(self.stderr)}")
            time.sleep(0.01)
        raise AssertionError(f"fewer than {rows} rows after {timeout} s")

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no cleanup of any kind
        self.proc.wait(DEADLINE_S)
        self._reader.join(10)

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


@pytest.fixture(scope="module")
def server() -> Any:
    srv = FakeOpenAIServer(responder=responder, latency=0.03).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def reference(server: FakeOpenAIServer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An uninterrupted build (own project, own cache): what every resumed build must equal."""
    root = tmp_path_factory.mktemp("reference")
    config = make_project(root / "project", server.base_url, OVERRIDES)
    out = _complete(config, root / "cache")
    run = root / "project" / "outputs" / "test"
    assert verify_run(run) == []
    return {
        "docs": ids_and_texts(run),
        "rejected": sorted(pl.read_parquet(run / "rejected.parquet")["id"].to_list()),
        "stdout": out,
    }


def _assert_same(run: Path, reference: dict) -> None:
    assert verify_run(run) == []
    docs = ids_and_texts(run)
    assert len({i for i, _ in docs}) == len(docs)  # no duplicate
    assert docs == reference["docs"]  # same ids and texts, nothing missing
    rejected = sorted(pl.read_parquet(run / "rejected.parquet")["id"].to_list())
    assert rejected == reference["rejected"]


def test_reference_build_prints_where_everything_is(reference: dict) -> None:
    out = reference["stdout"]
    for label in ("card:", "report:", "shards:", "documents:", "rejected:", "time:"):
        assert label in out
    assert len(reference["docs"]) > 20


def test_ctrl_c_and_kill_9_during_generation_then_resume(
    server: FakeOpenAIServer, reference: dict, tmp_path: Path
) -> None:
    config = make_project(tmp_path / "project", server.base_url, OVERRIDES)
    cache = tmp_path / "cache"
    run = tmp_path / "project" / "outputs" / "test"
    generated = run / "work" / "generated.jsonl"

    # Ctrl-C: a clean stop with exit code 130, one line, no traceback.
    build = Build(config, cache)
    build.wait_for_rows(generated, 5)
    build.proc.send_signal(signal.SIGINT)
    code, _out, err = build.finish()
    assert code == 130, err
    assert "Traceback" not in err
    assert "interrupted" in err and "rerun" in err
    rows_at_stop = generated.read_bytes().count(b"\n")

    # kill -9 of the resumed build, a few results later.
    build = Build(config, cache)
    build.wait_for_rows(generated, rows_at_stop + 5)
    build.kill()
    rows_at_kill = generated.read_bytes().count(b"\n")
    assert not (run / "manifest.json").exists()

    server.reset_counts()
    out = _complete(config, cache)
    _assert_same(run, reference)
    assert "up to date" not in out
    # The last build did not redo what the interrupted ones had finished.
    final_rows = generated.read_bytes().count(b"\n")
    assert rows_at_kill < final_rows
    assert server.count("chat") < len(reference["docs"]) + len(reference["rejected"])
    assert "is up to date" in _complete(config, cache)


def test_kill_9_during_assembly_then_resume(
    server: FakeOpenAIServer, reference: dict, tmp_path: Path
) -> None:
    config = make_project(tmp_path / "project", server.base_url, OVERRIDES)
    cache = tmp_path / "cache"
    run = tmp_path / "project" / "outputs" / "test"
    states = []
    for delay in (0.0, 0.15, 0.5, 1.2):
        build = Build(config, cache)
        if not build.wait_for_line("[assemble] writing"):
            break  # an earlier kill landed after assembly had finished: nothing left to do
        time.sleep(delay)
        if build.proc.poll() is not None:
            break
        build.kill()
        manifest = run / "manifest.json"
        states.append(
            "no manifest"
            if not manifest.exists()
            else "no report"
            if not (run / "report.html").exists()
            else "complete"
        )
    assert len(states) >= 2
    assert "no manifest" in states  # at least one kill left a half-assembled run
    _complete(config, cache)
    _assert_same(run, reference)
    assert not list(run.rglob(".*.tmp-*"))  # no temporary file left behind
    assert not (run / ".assemble").exists()
