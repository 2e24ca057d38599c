"""The local executor's worker processes (``[run] workers``, ``builder.run.pool``): the same
corpus byte for byte as in one process, and a killed build leaves no worker behind and
resumes without redoing finished partitions.

Builds run through the CLI against the loopback fake server, on a project with tiny
partitions (many tasks); with verification and the judge on, the workers' model calls
(second samples, grades) are answered by the build's own engine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builder.cli import main
from tests.support.fake_openai_server import FakeOpenAIServer
from tests.support.project import (
    BUILD_ENV,
    ROOT,
    TINY_PARTITIONS,
    judging_responder,
    make_project,
    responder,
    untimed,
)

PROJECT = TINY_PARTITIONS
_ENV = BUILD_ENV
POOLED = ("filter", "quality")


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    """Per test (a thread, cheap), so the module's two builds can run on two workers."""
    with FakeOpenAIServer(responder=responder) as srv:
        yield srv


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in _ENV:
        monkeypatch.delenv(var, raising=False)


def _build(config: Path, workers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORPUS_WORKERS", str(workers))
    try:
        main(["build", "--config", str(config), "--no-progress"])
    except SystemExit as exc:
        assert exc.code in (0, None)


def _files(run: Path) -> dict[str, bytes]:
    """Shards, rejections and the pooled stages' partitions, by relative path."""
    files = [*run.glob("documents/*.parquet"), run / "rejected.parquet"]
    for stage in POOLED:
        files += list((run / "work" / stage).rglob("part-*.parquet"))
    return {str(p.relative_to(run)): p.read_bytes() for p in files}


def _workers(run: Path, stage: str) -> set[int | None]:
    """Who ran each partition of ``stage`` (the pid a pool worker records; None: here)."""
    records = (run / "work" / stage / "_partitions").glob("*.json")
    return {json.loads(r.read_text()).get("worker") for r in records}


def test_two_workers_write_the_same_corpus_as_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: None
) -> None:
    """Verification asks the model for second samples and the judge grades every document:
    from the workers, through the driver's engine (same requests, same meter)."""
    judge = {"judge": {"enabled": True}, "filters": {"min_relevance": -1, "min_edu_score": 0}}
    with FakeOpenAIServer(responder=judging_responder) as server:
        _two_builds(server, tmp_path, monkeypatch, {**PROJECT, **judge})


def _two_builds(
    server: FakeOpenAIServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    project: dict[str, dict[str, Any]],
) -> None:
    generated = tmp_path / "generated"
    config = make_project(generated, server.base_url, project)
    main(["generate", "--config", str(config)])  # raises SystemExit on failure
    place = tmp_path / "p"  # both builds of one generated copy at one path (records name it)
    shutil.copytree(generated, place)
    _build(place / "corpus.toml", 1, monkeypatch)
    run = place / "outputs" / "r"
    one = shutil.move(place, tmp_path / "one") / "outputs" / "r"
    shutil.copytree(generated, place)
    _build(place / "corpus.toml", 2, monkeypatch)
    two = _files(run)
    reference = _files(one)
    assert sorted(two) == sorted(reference)
    assert len([k for k in two if "/kept/" in k]) >= 6  # many partitions to spread
    for name, data in reference.items():
        assert two[name] == data, name
    manifest = json.loads((run / "manifest.json").read_text())
    expected = json.loads((one / "manifest.json").read_text())
    # counts, requests, cost; not workers
    assert untimed(manifest, ("created_at",)) == untimed(expected, ("created_at",))
    done = run / "work" / "_done"
    filtered = json.loads((done / "filter.json").read_text())["counters"]
    graded = json.loads((done / "quality.json").read_text())["counters"]["stats"]["judge"]
    assert filtered["verified"] > 0 and graded["documents"] > 0  # the workers asked the model
    assert _workers(one, "filter") == {None}
    for stage in POOLED:
        pids = _workers(run, stage)
        assert None not in pids and os.getpid() not in pids, stage


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent's reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_a_killed_build_leaves_no_worker_and_resumes(
    server: FakeOpenAIServer, tmp_path: Path, env: None
) -> None:
    config = make_project(tmp_path / "p", server.base_url, PROJECT)
    run = config.parent / "outputs" / "r"
    argv = [sys.executable, "-m", "builder", "build", "--config", str(config), "--no-progress"]
    base = {k: v for k, v in os.environ.items() if k not in _ENV}
    env = {**base, "PYTHONPATH": str(ROOT), "CORPUS_WORKERS": "2"}
    killed = subprocess.run(
        argv, env={**env, "CORPUS_FAULT": "partition.done:3"}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    # (returning at all shows that no child kept the build's stdout/stderr pipes open)
    assert killed.returncode == -9, killed.stderr[-2000:]
    records = sorted((run / "work" / "filter" / "_partitions").glob("*.json"))
    assert len(records) == 3  # killed right after recording the third filter partition
    pids = {json.loads(r.read_text())["worker"] for r in records}
    # The workers get SIGKILL when the build dies (PR_SET_PDEATHSIG); wait for it, bounded.
    for _ in range(2000):
        if not any(_alive(pid) for pid in pids):
            break
        os.sched_yield()
        subprocess.run(["true"], check=True)  # let the kernel deliver the signal
    assert not any(_alive(pid) for pid in pids)
    resumed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    counters = json.loads((run / "work" / "_done" / "filter.json").read_text())["counters"]
    assert counters["partitions_skipped"] == 3 and counters["partitions_run"] >= 3
