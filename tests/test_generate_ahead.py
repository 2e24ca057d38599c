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
import sqlite3
import subprocess
import sys
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


def _rows(project: Path) -> list[list[dict]]:
    parts = list_parts(project / "outputs" / "test" / "work" / "generate")
    return [pq.read_table(p).drop_columns(["created_at"]).to_pylist() for p in parts]


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
