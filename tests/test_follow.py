"""Filter and quality following generate (``[run] follow``, ``builder.run.follow``): the
tasks a follower runs while generate is still running are the ones the stages would have
run, byte for byte, and the stages skip them; a build killed right after the follower
recorded a task resumes to the same corpus without redoing it.

Builds run against the loopback fake server on a project with tiny partitions (many tasks)
and two local workers (a follower is a worker process: ``[run] workers = 1`` has none).
"""

from __future__ import annotations

import contextlib
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
from builder.config import load_config
from builder.run.build import open_context
from builder.run.executor import LocalExecutor
from builder.run.follow import followers, following
from builder.stages import build_stages
from tests.support.fake_openai_server import FakeOpenAIServer
from tests.support.project import BUILD_ENV, ROOT, TINY_PARTITIONS, make_project, responder

PROJECT: dict[str, dict[str, Any]] = {
    **TINY_PARTITIONS,
    # code exercises are still executed; no second samples (the follower sends no request)
    "verify": {"second_sample": False},
    "run": {**TINY_PARTITIONS["run"], "workers": 2},
}
_ENV = BUILD_ENV
FOLLOWING = ("filter", "quality")


@pytest.fixture
def base_url() -> Iterator[str]:
    """The loopback fake server's address, per test (a thread, cheap)."""
    with FakeOpenAIServer(responder=responder) as srv:
        yield srv.base_url


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in _ENV:
        monkeypatch.delenv(var, raising=False)


def _files(run: Path) -> dict[str, bytes]:
    """Shards, rejections and the following stages' partitions, by relative path."""
    files = [*run.glob("documents/*.parquet"), run / "rejected.parquet"]
    for stage in FOLLOWING:
        files += list((run / "work" / stage).rglob("part-*.parquet"))
    return {str(p.relative_to(run)): p.read_bytes() for p in files}


def _counters(run: Path, stage: str) -> dict[str, Any]:
    return json.loads((run / "work" / "_done" / f"{stage}.json").read_text())["counters"]


def _generated(base_url: str, tmp_path: Path) -> Path:
    """A project whose documents are generated (the rows carry their generation time, so
    the builds compared start from one generated copy, at one path)."""
    generated = tmp_path / "generated"
    config = make_project(generated, base_url, PROJECT)
    main(["generate", "--config", str(config)])  # raises SystemExit on failure
    return generated


def _reference(generated: Path, place: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """The corpus built from ``generated`` at ``place`` without a follower (one worker)."""
    shutil.copytree(generated, place)
    monkeypatch.setenv("CORPUS_WORKERS", "1")
    with contextlib.suppress(SystemExit):
        main(["build", "--config", str(place / "corpus.toml"), "--no-progress"])
    monkeypatch.delenv("CORPUS_WORKERS")
    run = place / "outputs" / "r"
    for stage in FOLLOWING:
        assert _counters(run, stage)["partitions_followed"] == 0
    files = _files(run)
    shutil.rmtree(place)
    return files


def _generated_context(project: Path, stack: contextlib.ExitStack) -> tuple[Any, list, int]:
    """The build's context of a generated ``project``, its stages run up to generate (up
    to date: `corpus generate` ran), the stages and generate's index."""
    config = load_config(project / "corpus.toml")
    stages = build_stages()
    at = [s.name for s in stages].index("generate")
    ctx = open_context(config, stack=stack)
    ctx.executor = LocalExecutor(config)
    for stage in stages[: at + 1]:
        ctx.executor.run_stage(stage, ctx)
    return ctx, stages, at


def _same(files: dict[str, bytes], reference: dict[str, bytes]) -> None:
    assert sorted(files) == sorted(reference)
    assert len([k for k in files if "/kept/" in k]) >= 6  # many partitions to follow
    for name, data in reference.items():
        assert files[name] == data, name


def test_tasks_run_while_generating_are_the_stages_own(
    base_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every filter and quality task run by a follower of generate (drained, so that none is
    left to the stages): the stages then run none themselves and write the same files."""
    generated, place = _generated(base_url, tmp_path), tmp_path / "p"
    reference = _reference(generated, place, monkeypatch)
    shutil.copytree(generated, place)
    config = load_config(place / "corpus.toml")
    stages = build_stages()
    with contextlib.ExitStack() as stack:
        ctx = open_context(config, stack=stack)
        ctx.executor = LocalExecutor(config)
        names = {stage.name: [s.name for s in followers(stages, i, ctx)] for i, stage in
                 enumerate(stages)}  # fmt: skip
        assert names["generate"] == list(FOLLOWING)
        assert all(not chain for name, chain in names.items() if name != "generate")
        for i, stage in enumerate(stages):
            with following(ctx, followers(stages, i, ctx), drain=True):
                ctx.executor.run_stage(stage, ctx)
    run = ctx.paths.root
    for stage in FOLLOWING:
        counters = _counters(run, stage)
        assert counters["partitions_run"] == 0, stage
        assert counters["partitions_followed"] == counters["partitions_skipped"] > 0, stage
    _same(_files(run), reference)


def test_a_build_killed_after_a_followed_task_resumes_without_redoing_it(
    base_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generated, place = _generated(base_url, tmp_path), tmp_path / "p"
    reference = _reference(generated, place, monkeypatch)
    shutil.copytree(generated, place)
    config = place / "corpus.toml"
    run = place / "outputs" / "r"
    argv = [sys.executable, "-m", "builder", "build", "--config", str(config), "--no-progress"]
    env = {k: v for k, v in os.environ.items() if k not in _ENV}
    env["PYTHONPATH"] = str(ROOT)
    killed = subprocess.run(
        argv, env={**env, "CORPUS_FAULT": "follow.done:1"}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    records = [json.loads(p.read_text()) for p in (run / "work" / "filter").glob("_p*/*.json")]
    assert [r.get("followed") for r in records] == [True]  # killed right after recording it
    assert not (run / "work" / "_done" / "filter.json").exists()
    resumed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _counters(run, "filter")["partitions_followed"] >= 1
    _same(_files(run), reference)


def test_no_follower_without_worker_processes_or_when_turned_off(
    base_url: str, tmp_path: Path
) -> None:
    stages = build_stages()
    at = [s.name for s in stages].index("generate")
    for run_settings, expected in (
        ({"workers": 2}, list(FOLLOWING)),
        ({"workers": 1}, []),
        ({"workers": 2, "follow": False}, []),
    ):
        project = {**PROJECT, "run": {**PROJECT["run"], **run_settings}}
        config = load_config(make_project(tmp_path / "p", base_url, project))
        with contextlib.ExitStack() as stack:
            ctx = open_context(config, stack=stack)
            ctx.executor = LocalExecutor(config)
            assert [s.name for s in followers(stages, at, ctx)] == expected, run_settings
        shutil.rmtree(tmp_path / "p")


def test_a_build_drains_the_followed_tasks_and_a_failed_block_drops_them(
    base_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``corpus build``: the partitions the follower had not reached when generate finished
    are run by the follower (on the executor's two processes), so filter and quality run
    none themselves, and the corpus is the one built without a follower. A block that fails
    leaves the tasks not started to the stages: only the ones running are recorded."""
    generated, place = _generated(base_url, tmp_path), tmp_path / "p"
    reference = _reference(generated, place, monkeypatch)
    shutil.copytree(generated, place)
    with contextlib.suppress(SystemExit):
        main(["build", "--config", str(place / "corpus.toml"), "--no-progress"])
    run = place / "outputs" / "r"
    for stage in FOLLOWING:
        counters = _counters(run, stage)
        assert counters["partitions_run"] == 0, stage
        assert counters["partitions_followed"] == counters["partitions_skipped"] > 0, stage
    _same(_files(run), reference)

    failed = tmp_path / "failed"
    shutil.copytree(generated, failed)
    with contextlib.ExitStack() as stack:
        ctx, stages, at = _generated_context(failed, stack)
        parts = sorted((ctx.paths.work / "generate").glob("part-*.parquet"))
        assert len(parts) >= 6
        with pytest.raises(RuntimeError, match="stop"):
            with following(ctx, followers(stages, at, ctx), drain=True):
                for part in parts:
                    ctx.partition_written(part)
                raise RuntimeError("stop")
    records = list((ctx.paths.work / "filter").glob("_p*/*.json"))
    assert len(records) <= 2  # the tasks running when the block failed (one a worker)


def test_the_followers_worker_loads_the_stages_before_the_first_partition(
    base_url: str, tmp_path: Path
) -> None:
    """Told that generate will write new partitions, the follower starts its worker and
    loads what filter and quality load once (the language detector and tokenizer, the
    embedding model and the units) before any partition is written."""
    from builder.run.follow import Follower

    with contextlib.ExitStack() as stack:
        ctx, stages, at = _generated_context(_generated(base_url, tmp_path), stack)
        chain = followers(stages, at, ctx)
        assert [s.name for s in chain] == list(FOLLOWING)
        idle = Follower(ctx, chain, workers=2)
        idle.close(drain=True)
        follower = Follower(ctx, chain, workers=2)
        follower.warm_up()
        follower.warm_up()  # once
        follower.close(drain=True)
    assert idle.warmed == {}  # no new partition: no worker started
    assert set(follower.warmed) == set(FOLLOWING) and follower.ran == 0
    assert "pycld2" in (follower.warmed["filter"] or "")
    assert (follower.warmed["quality"] or "").endswith(" units")
    assert not list((ctx.paths.work / "filter").glob("_p*/*.json"))  # no task ran


def test_a_new_runs_follower_workers_start_and_load_before_its_first_stage(
    base_url: str, tmp_path: Path
) -> None:
    """A new run starts the follower's workers before its first stage, and they load what
    the stages load once (the embedding model) as they start, so the follower's warm-up
    finds it loaded. A rerun, whose generate has written partitions, starts none; nor does
    a run without worker processes."""
    from builder.run.follow import Follower, early_workers, start_workers

    stages = build_stages()
    at = [s.name for s in stages].index("generate")
    config = load_config(make_project(tmp_path / "p", base_url, PROJECT))
    with contextlib.ExitStack() as stack:
        ctx = open_context(config, stack=stack)
        ctx.executor = LocalExecutor(config)
        early = early_workers(stages, ctx)
        assert early is not None and early[0] == at
        for stage in stages[:at]:
            ctx.executor.run_stage(stage, ctx)
        follower = Follower(ctx, followers(stages, at, ctx), workers=2, pool=early[1])
        follower.warm_up()
        follower.close(drain=True)
        # One process given both warm tasks: the second finds its stages warm and loads
        # nothing, which leaves what the first loaded on record.
        chain = followers(stages, at, ctx)
        shared = Follower(ctx, chain, workers=2, pool=start_workers(chain, ctx.config, 1))
        shared.warm_up()
        shared.close(drain=True)
    for one in (follower, shared):
        assert "(loaded as the worker started)" in (one.warmed["quality"] or "")
        assert (one.warmed["quality"] or "").endswith(" units")

    with contextlib.suppress(SystemExit):
        main(["build", "--config", str(tmp_path / "p" / "corpus.toml"), "--no-progress"])
    one = {**PROJECT, "run": {**PROJECT["run"], "workers": 1}}
    for project, place in ((PROJECT, tmp_path / "p"), (one, tmp_path / "one")):
        if not place.exists():
            make_project(place, base_url, project)
        config = load_config(place / "corpus.toml")
        with contextlib.ExitStack() as stack:
            ctx = open_context(config, stack=stack)
            ctx.executor = LocalExecutor(config)
            assert early_workers(stages, ctx) is None, place.name
