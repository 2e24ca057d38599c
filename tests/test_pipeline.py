"""End-to-end tests of ``builder.pipeline`` against the loopback fake OpenAI server.

One module-scoped build (faults injected, an API key required) is checked from several
sides: the corpus is valid, a rerun does nothing, the plan is exact once outputs exist, the
key is written nowhere, and an edited template resends only the prompts that changed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from builder.assemble import verify_run
from builder.config import load_config
from builder.errors import BudgetExceeded
from builder.pipeline import BuildSummary, build, plan
from tests.support.fake_openai_server import FakeOpenAIServer
from tests.support.project import BENCH_ITEM, DUP_TEXT, corpus, make_project, responder

API_KEY = "sk-test-Zq8vK3pL0wXy7Rt5Nm2Bc4Df6Gh9Jk1"
KEY_ENV = "CORPUS_PIPELINE_TEST_KEY"


def _faults(index: int, body: dict[str, Any]) -> str | None:
    """Retryable faults sprinkled over the first build's requests."""
    if index % 7 == 3:
        return "500"
    if index % 11 == 5:
        return "429"
    if index % 13 == 8:
        return "reset"
    if index in (2, 40):
        return "malformed"
    if index in (9, 50):
        return "truncate"
    return None


def _load(path: Path) -> Any:
    # No environment overrides: module-scoped builds must not follow a test's env vars.
    return load_config(path, env={})


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("pipeline")
    server = FakeOpenAIServer(responder=responder, faults=_faults, api_key=API_KEY).start()
    config_path = make_project(root / "project", server.base_url, {"llm": {"api_key_env": KEY_ENV}})
    cache = root / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, API_KEY)
        cfg = _load(config_path)
        before = plan(cfg, cache_dir=str(cache))
        logs: list[str] = []
        summary = build(cfg, cache_dir=str(cache), progress=False, log=logs.append)
        chat_calls = server.count("chat")
    server.faults = None
    yield {
        "server": server,
        "config": config_path,
        "cache": cache,
        "summary": summary,
        "plan_before": before,
        "logs": logs,
        "chat_calls": chat_calls,
    }
    server.stop()


def test_build_makes_a_valid_corpus_despite_faults(built: dict[str, Any]) -> None:
    summary: BuildSummary = built["summary"]
    run = summary.run_dir
    assert not summary.up_to_date
    assert verify_run(run) == []
    assert summary.card.exists() and summary.report.exists()
    assert "<html" in summary.report.read_text(encoding="utf-8").lower()
    assert summary.card.read_text(encoding="utf-8").startswith("---\n")
    docs = corpus(run)
    assert docs.height == summary.documents > 0
    assert docs["id"].n_unique() == docs.height
    assert summary.tokens == docs["n_tokens"].sum() > 0
    assert set(docs["kind"]) == {"section", "exercise"}
    assert set(docs["discipline"]) == {"computing", "mathematics"}
    # Every code and quantitative exercise that is kept passed its check.
    checkable = docs.filter(pl.col("exercise_type").is_in(["code", "quantitative"]))
    assert checkable.height > 0 and checkable["verified"].to_list() == [True] * checkable.height
    # The planted problems were each caught by their stage.
    assert summary.rejected == {
        "decontam/benchmark contamination": 1,
        "dedup/exact duplicate": 1,
        "filter/truncated": 1,
    }
    assert docs.filter(pl.col("text") == DUP_TEXT).height == 1
    assert not docs["text"].str.contains(BENCH_ITEM, literal=True).any()
    rejected = pl.read_parquet(run / "rejected.parquet")
    assert set(rejected["id"]).isdisjoint(set(docs["id"]))
    dup = rejected.filter(pl.col("stage") == "dedup")
    assert dup["kind"].to_list() == ["section"] and dup["text"].to_list() == [DUP_TEXT]
    # The algorithms syllabus is always invalid: that subject is walked by its topics.
    assert summary.syllabi_failed == ["algorithms"]
    assert {"loops", "sorting", "binary-search", "recursion"} <= set(rejected["topic"]) | set(
        docs["topic"]
    )
    # The fake injected faults, the engine retried them.
    assert built["chat_calls"] > summary.requests_sent
    manifest = json.loads(summary.manifest.read_text(encoding="utf-8"))
    stats = manifest["stats"]
    assert stats["cost_usd"] == pytest.approx(summary.cost) and summary.cost > 0
    assert set(stats["stages"]) >= {"syllabi", "walk", "generate", "filter", "dedup", "decontam"}


def test_rerun_of_a_finished_build_sends_nothing(built: dict[str, Any]) -> None:
    server: FakeOpenAIServer = built["server"]
    server.reset_counts()
    logs: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, API_KEY)
        again = build(
            _load(built["config"]), cache_dir=str(built["cache"]), progress=False, log=logs.append
        )
    assert again.up_to_date
    assert server.count("all") == 0
    assert again.requests_sent == 0 and again.cost == 0
    assert again.documents == built["summary"].documents
    for stage in ("filter", "dedup", "decontam", "assemble"):
        assert f"[{stage}] up to date" in logs


def test_plan_is_exact_once_outputs_exist(built: dict[str, Any]) -> None:
    before = built["plan_before"]
    summary: BuildSummary = built["summary"]
    # Before anything existed: three syllabi to write, topics as units, estimates for the rest.
    assert before.syllabus_requests == 3
    assert before.total.cached == 0 and before.estimated > 0
    assert before.total.cost is not None and before.total.cost > 0
    assert {r.discipline for r in before.rows} == {"computing", "mathematics", "(syllabi)"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, API_KEY)
        after = plan(_load(built["config"]), cache_dir=str(built["cache"]))
    # Afterwards every request is known and answered by the cache: nothing to send, and the
    # plan counts exactly what the first build sent (its requests were all cache misses),
    # except the syllabi it wrote (they exist now; only the failed one is asked for again).
    assert after.estimated == 0
    assert after.total.to_dict()["to_send"] == 0
    assert after.total.cost == 0
    assert after.total.requests == summary.requests_sent - summary.syllabi_written
    assert after.missing_syllabi == ("algorithms",)
    assert after.units == summary.units


def test_api_key_is_written_nowhere(built: dict[str, Any]) -> None:
    server: FakeOpenAIServer = built["server"]
    assert server.api_key == API_KEY  # the fake refused requests without it
    needle = API_KEY.encode()
    roots = [built["summary"].run_dir, built["cache"], built["config"].parent / "taxonomy"]
    checked = 0
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                checked += 1
                assert needle not in path.read_bytes(), path
    assert checked > 10


def test_edited_syllabus_resends_only_the_edited_subjects_prompts(
    built: dict[str, Any], tmp_path: Path
) -> None:
    """A curator edits one session of one subject's syllabus: the rebuild sends exactly the
    requests of the units that changed (plus evolutions of their exercises); every other
    request is answered from the cache."""
    from builder.pipeline import walk_units
    from builder.stages.generate import read_run_generated
    from builder.syllabus import syllabus_files
    from builder.taxonomy import load_taxonomy

    project = tmp_path / "project"
    shutil.copytree(built["config"].parent, project)
    cache = tmp_path / "cache"
    shutil.copytree(built["cache"], cache)
    config_path = project / "corpus.toml"
    cfg = _load(config_path)
    tax = load_taxonomy(project / "taxonomy")
    _walk, before_units = walk_units(tax, cfg)
    run_dir = project / built["summary"].run_dir.relative_to(built["config"].parent)
    rows_before = read_run_generated(run_dir)

    files = syllabus_files(tax)
    assert files, "the first build generated syllabi"
    edited = files[0]
    subject = edited.stem
    # Reword every key concept of the subject (as a curator would, by hand in the YAML).
    lines, concepts_indent = [], None
    for line in edited.read_text(encoding="utf-8").splitlines():
        indent = len(line) - len(line.lstrip())
        if line.strip() == "concepts:":
            concepts_indent = indent
        elif concepts_indent is not None and indent > concepts_indent and "- " in line:
            line = line.replace("- ", "- revised ", 1)
        else:
            concepts_indent = None
        lines.append(line)
    edited.write_text("\n".join(lines) + "\n", encoding="utf-8")

    _walk, after_units = walk_units(load_taxonomy(project / "taxonomy"), cfg)
    changed_units = {u.unit_id for u in after_units} - {u.unit_id for u in before_units}
    assert changed_units, "the edit changes some units"
    assert all(u.subject == subject for u in after_units if u.unit_id in changed_units), (
        "only the edited subject's units change"
    )

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, API_KEY)
        server: FakeOpenAIServer = built["server"]
        server.reset_counts()
        summary = build(_load(config_path), cache_dir=str(cache), progress=False)
    rows_after = read_run_generated(run_dir)
    retried = {k for k, r in rows_before.items() if r["status"] == "failed"}
    new_rows = {k: r for k, r in rows_after.items() if k not in rows_before or k in retried}
    assert new_rows, "the edited units were generated"
    # Every request sent belongs to a changed unit (or retries an earlier failure) ...
    assert all(r["unit_id"] in changed_units or k in retried for k, r in new_rows.items())
    # ... and exactly those were sent: one HTTP call per new row, plus the independent
    # second answers that verify the new quantitative exercises; the rest are cache hits.
    from builder.verify.quant import SECOND_SAMPLE_SYSTEM

    second = [b for b in server.requests if b["messages"][0]["content"] == SECOND_SAMPLE_SYSTEM]
    new_quant = [r for r in new_rows.values() if r.get("exercise_type") == "quantitative"]
    assert len(second) <= len(new_quant)
    assert server.count("chat") == len(new_rows) + len(second) == summary.requests_sent
    assert summary.requests_cached > 0


def test_edited_template_resends_only_changed_prompts(
    built: dict[str, Any], tmp_path: Path
) -> None:
    from builder.generate import plan_requests
    from builder.pipeline import walk_units
    from builder.stages.generate import read_run_generated
    from builder.taxonomy import load_taxonomy
    from builder.templates import load_templates

    # Work on a copy so the other tests keep their build.
    project = tmp_path / "project"
    shutil.copytree(built["config"].parent, project)
    cache = tmp_path / "cache"
    shutil.copytree(built["cache"], cache)
    config_path = project / "corpus.toml"
    cfg = _load(config_path)
    tax = load_taxonomy(project / "taxonomy")
    _walk, units = walk_units(tax, cfg)
    old = {
        r.id: r.messages
        for r in plan_requests(units, load_templates(project / "templates"), cfg.generate)
    }

    section = project / "templates" / "section.j2"
    section.write_text(
        section.read_text(encoding="utf-8") + "\nEnd with one question for the reader.\n",
        encoding="utf-8",
    )
    new = plan_requests(units, load_templates(project / "templates"), cfg.generate)
    changed = sum(1 for r in new if old.get(r.id) != r.messages)
    failed = sum(
        1
        for row in read_run_generated(built["summary"].run_dir).values()
        if row["status"] == "failed"
    )
    expected = changed + failed
    assert 0 < changed < len(new)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, API_KEY)
        cfg = _load(config_path)
        predicted = plan(cfg, cache_dir=str(cache)).total.to_dict()["to_send"]
        server: FakeOpenAIServer = built["server"]
        server.reset_counts()
        summary = build(cfg, cache_dir=str(cache), progress=False)
    assert server.count("chat") == expected == summary.requests_sent
    assert predicted == expected
    assert not summary.up_to_date
    assert summary.requests_cached > 0
    assert verify_run(summary.run_dir) == []
    sections = corpus(summary.run_dir).filter(pl.col("kind") == "section")
    assert sections.height > 0


def test_budget_cap_stops_and_rerun_resumes(tmp_path: Path) -> None:
    with FakeOpenAIServer(responder=responder) as server:
        config_path = make_project(
            tmp_path / "p",
            server.base_url,
            {
                "walk": {"subtree": ["arithmetic"], "limit": 2},
                "generate": {"documents_per_unit": 2, "evolve": False},
                "verify": {"second_sample": False},
            },
        )
        cfg = _load(config_path)
        cache = str(tmp_path / "cache")
        with pytest.raises(BudgetExceeded, match=r"--max-cost \$0.005 reached"):
            build(cfg, cache_dir=cache, max_cost=0.005, progress=False)
        spent = server.count("chat")
        assert 0 < spent
        summary = build(cfg, cache_dir=cache, progress=False)
        assert verify_run(summary.run_dir) == []
        assert summary.documents > 0
        # Only what the capped build had not finished was sent on the rerun.
        assert server.count("chat") - spent == summary.requests_sent
        ledger = json.loads((summary.run_dir / "work" / "ledger.json").read_text())
        assert ledger["builds"] == 2
        assert ledger["cost_usd"] == pytest.approx(summary.total_cost)
        assert summary.total_cost > summary.cost


def test_build_with_a_caller_engine_and_no_benchmarks(tmp_path: Path) -> None:
    """The library entry point takes the caller's LLM (here an engine opened on the fake
    server with another model name) and a config that disables decontamination and dedup;
    the corpus is still assembled, every document from the caller's engine."""
    from builder.llm import open_engine

    with FakeOpenAIServer(responder=responder) as server:
        config_path = make_project(
            tmp_path / "p",
            server.base_url,
            {
                "syllabus": {"generate_missing": False},
                "walk": {"subtree": ["programming"]},
                "generate": {"documents_per_unit": 2, "evolve": False},
                "dedup": {"enabled": False},
                "decontam": {"benchmarks": [], "enabled": False},
            },
        )
        cfg = _load(config_path)
        settings = cfg.llm.model_copy(update={"model": "caller-model"})
        with open_engine(settings, cache_dir=tmp_path / "cache", progress=False) as engine:
            summary = build(cfg, llm=engine)
        sent = server.count("chat")
        models = {body["model"] for body in server.requests}
    docs = corpus(summary.run_dir)
    assert docs.height == summary.documents > 0
    assert set(docs["model"]) == {"caller-model"} and models == {"caller-model"}
    assert set(docs["subject"]) == {"programming"}
    assert not (tmp_path / "p" / "taxonomy" / "computing" / "syllabi").exists()
    assert sent == summary.requests_sent


@pytest.mark.integration
def test_build_on_the_embedded_model(tmp_path: Path) -> None:
    """One short section from the real embedded model (SmolLM2 via llama.cpp), end to end."""
    config_path = make_project(tmp_path / "p", "unused", {})
    text = config_path.read_text(encoding="utf-8")
    # The embedded model: no base_url, no model, no price.
    start = text.index("[llm]")
    end = text.index("[taxonomy]")
    text = text[:start] + "[llm]\nmax_concurrency = 1\n\n" + text[end:]
    text = text.replace("documents_per_unit = 4", "documents_per_unit = 1")
    config_path.write_text(text, encoding="utf-8")
    cfg = load_config(
        config_path,
        {
            "syllabus.generate_missing": False,
            "walk.limit": 1,
            "walk.subtree": ["fractions"],
            "generate.templates": ["section"],
            "generate.max_tokens": 96,
            "filters.min_tokens": 10,
        },
        env={},
    )
    summary = build(cfg, cache_dir=str(tmp_path / "cache"), progress=False)
    assert verify_run(summary.run_dir) == []
    assert summary.requests_sent == 1
    assert summary.documents + sum(summary.rejected.values()) == 1
    again = build(cfg, cache_dir=str(tmp_path / "cache"), progress=False)
    assert again.up_to_date


def test_a_build_whose_documents_are_all_rejected_is_still_a_valid_run(tmp_path: Path) -> None:
    with FakeOpenAIServer(responder=lambda body: "Too short to keep.") as server:
        config_path = make_project(
            tmp_path / "p",
            server.base_url,
            {
                "syllabus": {"generate_missing": False},
                "walk": {"subtree": ["fractions"], "limit": 1},
                "generate": {"documents_per_unit": 1, "templates": ["section"]},
                "filters": {"min_tokens": 100_000},
            },
        )
        summary = build(_load(config_path), cache_dir=str(tmp_path / "cache"), progress=False)
        assert server.count("chat") == summary.requests_sent == 1
    assert summary.documents == 0
    assert summary.rejected == {"filter/too_short": 1}
    assert verify_run(summary.run_dir) == []
    assert corpus(summary.run_dir).height == 0
    assert summary.card.exists() and summary.report.exists()


def test_two_builds_of_one_run_cannot_overlap(tmp_path: Path) -> None:
    import fcntl

    from builder.errors import BuilderError

    with FakeOpenAIServer(responder=responder) as server:
        config_path = make_project(tmp_path / "p", server.base_url)
        work = tmp_path / "p" / "outputs" / "test" / "work"
        work.mkdir(parents=True)
        with open(work / ".build.lock", "a+b") as fh:  # as a running build holds it
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            with pytest.raises(BuilderError, match="another `corpus build` is building this run"):
                build(_load(config_path), cache_dir=str(tmp_path / "cache"), progress=False)
        assert server.count("all") == 0  # refused before asking the server anything
