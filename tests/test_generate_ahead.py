"""Planning unit partitions in a separate process (builder.generate_ahead) changes nothing
a run leaves: the same generation partitions and the same cache entries as planning every
partition in the build's own process (``[run] workers = 1``, as the test projects set)
with ``workers = 2`` asking for the planning process.
And system prompts, rendered once per distinct values of the variables they read, are the
prompts a fresh render gives."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from builder.records import Unit
from builder.templates import load_templates, sample_units
from builder.util.partitions import list_parts
from tests.support.fake_openai_server import FakeOpenAIServer
from tests.support.project import ROOT, make_project, responder

OVERRIDES = {
    "llm": {"max_concurrency": 4},
    "walk": {"subtree": ["algorithms", "arithmetic"]},
    "generate": {"documents_per_unit": 3},  # exercises too: evolve waves planned here
    "run": {"units_per_partition": 3},
}


def _generate(config: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORPUS_")}
    env["CORPUS_CACHE_DIR"] = str(cache)
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "builder", "generate", "--config", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _rows(project: Path, varying: tuple[str, ...] = ("created_at",)) -> list[list[dict]]:
    parts = list_parts(project / "outputs" / "test" / "work" / "generate")
    return [pq.read_table(p).drop_columns(list(varying)).to_pylist() for p in parts]


def _cache(cache: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(cache / "llm-cache.sqlite3") as conn:
        return conn.execute("SELECT key, request FROM responses ORDER BY key").fetchall()


def test_planning_ahead_leaves_the_same_partitions_and_cache(tmp_path: Path) -> None:
    with FakeOpenAIServer(responder=responder) as srv:
        here = make_project(
            tmp_path / "here",
            srv.base_url,
            {**OVERRIDES, "run": {**OVERRIDES["run"], "workers": 1}},
        )
        ahead = make_project(
            tmp_path / "ahead",
            srv.base_url,
            {**OVERRIDES, "run": {**OVERRIDES["run"], "workers": 2}},
        )
        done_here = _generate(here, tmp_path / "cache-here")
        done_ahead = _generate(ahead, tmp_path / "cache-ahead")
    assert done_here.returncode == 0, done_here.stderr
    assert done_ahead.returncode == 0, done_ahead.stderr
    assert "planned in a planning process" not in done_here.stderr
    assert "planned in a planning process" in done_ahead.stderr
    rows = _rows(tmp_path / "ahead")
    assert len(rows) > 2 and all(rows)  # several partitions, each with documents
    assert any(r["evolution_step"] for part in rows for r in part)  # evolve waves ran
    assert rows == _rows(tmp_path / "here")
    assert _cache(tmp_path / "cache-ahead") == _cache(tmp_path / "cache-here")


def _system_prompts(templates_dir: Path, units, fresh: bool) -> list[str]:
    templates = load_templates(templates_dir)
    prompts = []
    for unit in units:
        for audience in list(templates.audiences)[:2]:
            if fresh:
                templates = load_templates(templates_dir)
            rendered = templates.render("section", unit, audience=audience, style="textbook")
            prompts.append(rendered.messages[0]["content"])
    return prompts


def _units() -> list[Unit]:
    """Units of two disciplines, each with several topics (the sample units, varied)."""
    units = []
    for i, unit in enumerate(sample_units()):
        for discipline in ("Mathematics", "Physics"):
            units.append(
                dataclasses.replace(
                    unit,
                    unit_id=f"{unit.unit_id}-{i}-{discipline}",
                    discipline_name=discipline,
                    topic_name=f"{unit.topic_name} {i}",
                )
            )
    return units


def test_reused_system_prompts_equal_fresh_renders(tmp_path: Path) -> None:
    # A system template that includes another one: what it reads is not all in its own text
    # (here the topic), so its renders must not be reused across topics.
    templates_dir = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates_dir)
    system = templates_dir / "system.j2"
    system.write_text(system.read_text() + '{% include "topic_line" %}\n')
    (templates_dir / "topic_line.j2").write_text(
        "---\nkind: system\ndescription: the topic line\n---\nTopic: {{ topic_name }}.\n"
    )
    units = _units()
    assert len({u.topic_name for u in units}) > 2
    for directory in (ROOT / "templates", templates_dir):
        reused = _system_prompts(directory, units, fresh=False)
        assert reused == _system_prompts(directory, units, fresh=True)
        assert len(set(reused)) > 1
    topics = _system_prompts(templates_dir, units, fresh=False)
    for unit, prompt in zip([u for u in units for _ in range(2)], topics, strict=True):
        assert f"Topic: {unit.topic_name}." in prompt


def test_auto_plans_ahead_only_with_a_core_to_spare() -> None:
    from builder.generate_ahead import plan_ahead

    assert [plan_ahead(0, cpus) for cpus in (1, 2, 3, 8)] == [False, False, True, True]
    assert [plan_ahead(w, 2) for w in (1, 2, 4)] == [False, True, True]


def _marked(mark: str) -> list[int]:
    """Pids of live processes whose environment holds ``mark``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if mark.encode() in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_kill_9_with_a_planning_process_leaves_none_and_resumes_to_the_same_rows(
    tmp_path: Path,
) -> None:
    overrides = {**OVERRIDES, "run": {**OVERRIDES["run"], "workers": 2, "flush_rows": 2}}
    mark = f"PLANNER_TEST_MARK={tmp_path}"
    with FakeOpenAIServer(responder=responder) as srv:
        ref = make_project(tmp_path / "ref", srv.base_url, overrides)
        assert _generate(ref, tmp_path / "ref-cache").returncode == 0
        config = make_project(tmp_path / "run", srv.base_url, overrides)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORPUS_")}
        env.update(
            CORPUS_CACHE_DIR=str(tmp_path / "cache"),
            CORPUS_FAULT="generate.journal:3",
            PYTHONPATH=str(ROOT),
            PLANNER_TEST_MARK=str(tmp_path),
        )
        killed = subprocess.run(
            [sys.executable, "-m", "builder", "generate", "--config", str(config)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        # the planning process dies with the build (PR_SET_PDEATHSIG, or the end of its
        # task pipe): poll until no process of this test's environment is left
        deadline = time.monotonic() + 60
        while _marked(mark) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _marked(mark) == []
        resumed = _generate(config, tmp_path / "cache")
        assert resumed.returncode == 0, resumed.stderr
        assert "planned in a planning process" in resumed.stderr
    # a resumed run finds what the killed one finished in the cache: only ``cached`` differs
    varying = ("created_at", "cached")
    assert _rows(tmp_path / "run", varying) == _rows(tmp_path / "ref", varying)
