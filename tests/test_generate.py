"""Generation: request plan, provenance rows, resume, transforms (with a scripted LLM)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from builder.errors import BudgetExceeded, ConfigError, InputError
from builder.generate import (
    GenerateStats,
    generate,
    iter_generated,
    plan_requests,
    read_generated,
    request_id,
)
from builder.llm.fake import ScriptedLLM
from builder.records import DOCUMENT_COLUMNS, ChatRequest, ChatResult, Unit
from builder.settings.generate import GenerateSettings
from builder.templates import REQUIRED_FIELDS, load_templates, sample_units

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "templates"

SECTION = (
    "Limits describe what value a function approaches as its input gets close to a point. "
) * 12

REPLIES = {
    "code": {
        "problem": "Write a function that adds two integers.",
        "signature": 'def add(a: int, b: int) -> int:\n    """Return a + b."""',
        "tests": "assert add(1, 2) == 3\nassert add(-1, 1) == 0",
        "solution": "def add(a: int, b: int) -> int:\n    return a + b",
    },
    "quantitative": {
        "problem": "A car travels 120 km in 2 hours. What is its speed in km/h?",
        "worked_solution": "speed = distance / time\n= 120 / 2\n= 60",
        "final_answer": "60",
    },
    "conceptual": {
        "problem": "Why does a limit not depend on the value at the point?",
        "answer": "Because a limit only looks at values near the point, not at it.",
    },
}


def reply(request: ChatRequest) -> str | dict:
    exercise_type = request.metadata.get("exercise_type")
    return REPLIES[exercise_type] if exercise_type else SECTION


def units(n: int = 3) -> list[Unit]:
    base = sample_units()
    return [base[i % len(base)] if i < len(base) else _unit(i) for i in range(n)]


def _unit(i: int) -> Unit:
    return Unit(
        unit_id=f"u{i}",
        discipline="mathematics",
        subject="calculus",
        topic=f"topic-{i}",
        taxonomy_path=f"mathematics/calculus/topic-{i}",
        discipline_name="Mathematics",
        subject_name="Calculus",
        topic_name=f"Topic {i}",
        concepts=("a", "b"),
        difficulty="basic",
    )


@pytest.fixture(scope="module")
def tset():
    return load_templates(SHIPPED)


# --------------------------------------------------------------------------- plan


def test_plan_ids_are_stable_unique_and_sampled_not_crossed(tset) -> None:
    settings = GenerateSettings(documents_per_unit=3)
    a = plan_requests(units(6), tset, settings)
    b = plan_requests(units(6), tset, settings)
    assert [r.id for r in a] == [r.id for r in b]
    assert [r.messages for r in a] == [r.messages for r in b]
    assert len({r.id for r in a}) == len(a) == 18  # 3 per unit, not the cross product
    for r in a:
        md = r.metadata
        rid = request_id(md["unit_id"], md["template"], md["audience"], md["style"], r.sample_index)
        assert r.id == rid
        assert r.params["seed"] == md["seed"]


def test_plan_uses_each_template_once_per_round(tset) -> None:
    settings = GenerateSettings(documents_per_unit=4)
    requests = plan_requests(units(5), tset, settings)
    by_unit: dict[str, Counter] = {}
    for r in requests:
        by_unit.setdefault(r.metadata["unit_id"], Counter())[r.metadata["template"]] += 1
    for counts in by_unit.values():
        assert set(counts) == {
            "section",
            "exercise_code",
            "exercise_quantitative",
            "exercise_conceptual",
        }
    audiences = Counter(r.metadata["audience"] for r in requests)
    assert len(audiences) == 4  # audiences cycle within a unit: all four appear


def test_plan_follows_explicit_settings(tset) -> None:
    settings = GenerateSettings(
        templates=["section"], audiences=["college"], styles=["textbook"], documents_per_unit=2
    )
    requests = plan_requests(units(3), tset, settings)
    assert len(requests) == 6
    assert {(r.metadata["template"], r.metadata["audience"], r.metadata["style"]) for r in requests}
    assert all(r.metadata["audience"] == "college" for r in requests)
    # Same combination twice in a unit: the second gets the next sample index and its own id.
    per_unit = [r for r in requests if r.metadata["unit_id"] == units(1)[0].unit_id]
    assert [r.sample_index for r in per_unit] == [0, 1]
    assert per_unit[0].id != per_unit[1].id
    assert per_unit[0].params["seed"] != per_unit[1].params["seed"]


def test_plan_rejects_unknown_names(tset) -> None:
    with pytest.raises(ConfigError, match="unknown template 'sectoin'"):
        plan_requests(units(1), tset, GenerateSettings(templates=["sectoin"]))
    with pytest.raises(ConfigError, match="unknown audience 'pirates'"):
        plan_requests(units(1), tset, GenerateSettings(audiences=["pirates"]))
    with pytest.raises(ConfigError, match="system template"):
        plan_requests(units(1), tset, GenerateSettings(templates=["system"]))


def test_settings_override_sampling_params(tset) -> None:
    settings = GenerateSettings(templates=["section"], temperature=0.1, max_tokens=64)
    (r,) = plan_requests(units(1), tset, settings)
    assert r.params["temperature"] == 0.1 and r.params["max_tokens"] == 64
    assert r.params["top_p"] == tset["section"].front.params.top_p


# --------------------------------------------------------------------------- rows


def test_generate_writes_rows_with_full_provenance(tset, tmp_path: Path) -> None:
    out = tmp_path / "gen.jsonl"
    llm = ScriptedLLM(reply)
    settings = GenerateSettings(documents_per_unit=4, evolve=False)
    stats = generate(units(2), tset, llm, settings, out)
    assert stats.sent == 8 and stats.by_status["ok"] == 8
    rows = list(read_generated(out).values())
    assert len(rows) == 8
    for row in rows:
        for column in DOCUMENT_COLUMNS:
            assert column in row
        assert row["model"] == "scripted" and row["request_sha256"]
        assert row["template_sha256"] == tset[row["template"]].sha256
        assert row["taxonomy_path"].count("/") == 2
        if row["kind"] == "exercise":
            fields = REQUIRED_FIELDS[row["exercise_type"]]
            assert set(fields) <= set(row["structured"])
            assert row["structured"]["problem"] in row["text"]
            assert row["text"].index(row["structured"]["problem"]) < len(row["text"]) // 2
        else:
            assert row["text"] == SECTION.strip()
    assert len({r["id"] for r in rows}) == 8


def test_resume_sends_nothing_for_finished_requests(tset, tmp_path: Path) -> None:
    out = tmp_path / "gen.jsonl"
    settings = GenerateSettings(documents_per_unit=2)
    first = ScriptedLLM(reply)
    generate(units(3), tset, first, settings, out)
    before = read_generated(out)
    second = ScriptedLLM(reply)
    stats = generate(units(3), tset, second, settings, out)
    assert second.calls == []
    assert stats.reused == stats.planned and stats.sent == 0
    after = read_generated(out)
    assert {k: v["created_at"] for k, v in after.items()} == {
        k: v["created_at"] for k, v in before.items()
    }


def test_torn_last_line_is_tolerated_and_redone(tset, tmp_path: Path) -> None:
    out = tmp_path / "gen.jsonl"
    settings = GenerateSettings(documents_per_unit=2, evolve=False)
    generate(units(2), tset, ScriptedLLM(reply), settings, out)
    data = out.read_bytes()
    out.write_bytes(data[: len(data) - 40])  # a kill in the middle of the last row
    assert len(read_generated(out)) == 3
    llm = ScriptedLLM(reply)
    generate(units(2), tset, llm, settings, out)
    assert len(llm.calls) == 1
    lines = out.read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # the torn fragment is gone
    assert len(read_generated(out)) == 4


def test_bad_line_in_the_middle_is_an_input_error(tset, tmp_path: Path) -> None:
    out = tmp_path / "gen.jsonl"
    generate(units(1), tset, ScriptedLLM(reply), GenerateSettings(evolve=False), out)
    out.write_text("{not json\n" + out.read_text())
    with pytest.raises(InputError) as info:
        read_generated(out)
    assert info.value.problem.line == 1


def test_failures_are_recorded_then_retried(tset, tmp_path: Path) -> None:
    out = tmp_path / "gen.jsonl"
    settings = GenerateSettings(templates=["section"], documents_per_unit=1)

    def failing(request: ChatRequest) -> ChatResult:
        return ChatResult(request_id=request.id, status="failed", error="HTTP 503 after 6 tries")

    generate(units(2), tset, ScriptedLLM(failing), settings, out)
    rows = list(read_generated(out).values())
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert rows[0]["error"] == "HTTP 503 after 6 tries"
    llm = ScriptedLLM(reply)
    generate(units(2), tset, llm, settings, out)
    assert len(llm.calls) == 2
    assert [r["status"] for r in read_generated(out).values()] == ["ok", "ok"]


def test_changed_template_is_regenerated(tset, tmp_path: Path) -> None:
    tdir = tmp_path / "templates"
    shutil.copytree(SHIPPED, tdir)
    out = tmp_path / "gen.jsonl"
    settings = GenerateSettings(templates=["section"], documents_per_unit=1)
    generate(units(2), load_templates(tdir), ScriptedLLM(reply), settings, out)
    path = tdir / "section.j2"
    path.write_text(path.read_text() + "Use British spelling.\n")
    changed = load_templates(tdir)
    llm = ScriptedLLM(reply)
    generate(units(2), changed, llm, settings, out)
    assert len(llm.calls) == 2
    assert "British spelling" in llm.calls[0].messages[-1]["content"]
    rows = list(read_generated(out).values())
    assert len(rows) == 2 and all(r["template_sha256"] == changed["section"].sha256 for r in rows)


# --------------------------------------------------------------------------- transforms


def test_exercises_are_evolved_to_harder_levels(tset, tmp_path: Path) -> None:
    out = tmp_path / "gen.jsonl"
    settings = GenerateSettings(
        templates=["exercise_code", "exercise_quantitative", "evolve_exercise"],
        documents_per_unit=2,
        evolution_steps=2,
    )
    llm = ScriptedLLM(reply)
    stats = generate(units(2), tset, llm, settings, out)
    rows = read_generated(out)
    by_id = {r["id"]: r for r in rows.values()}
    base = [r for r in by_id.values() if r["evolution_step"] == 0]
    step1 = [r for r in by_id.values() if r["evolution_step"] == 1]
    step2 = [r for r in by_id.values() if r["evolution_step"] == 2]
    assert len(base) == len(step1) == len(step2) == 4
    assert stats.waves == 3
    ladder = ["basic", "intermediate", "advanced", "expert"]
    for row in step1 + step2:
        parent = by_id[row["parent_id"]]
        assert row["kind"] == "exercise" and row["template"] == "evolve_exercise"
        assert row["exercise_type"] == parent["exercise_type"]
        assert row["source_template"] == parent["source_template"]
        assert row["audience"] == parent["audience"] and row["style"] == parent["style"]
        assert ladder.index(row["difficulty"].split("+")[0]) >= ladder.index(parent["difficulty"])
        assert row["difficulty"] != parent["difficulty"]
        assert row["evolution"] in tset["evolve_exercise"].front.transform_of.operations
    # The transform saw the parent exercise and kept its schema.
    evolve_calls = [c for c in llm.calls if c.metadata["template"] == "evolve_exercise"]
    assert all(c.schema is not None for c in evolve_calls)
    parent = by_id[step1[0]["parent_id"]]
    call = next(c for c in evolve_calls if c.metadata["parent_id"] == parent["id"])
    assert parent["structured"]["problem"] in call.messages[-1]["content"]
    # Resume covers the later waves too.
    again = ScriptedLLM(reply)
    generate(units(2), tset, again, settings, out)
    assert again.calls == []


def test_evolve_off_and_invalid_parents_are_not_evolved(tset, tmp_path: Path) -> None:
    settings = GenerateSettings(templates=["exercise_code", "evolve_exercise"], evolve=False)
    generate(units(2), tset, ScriptedLLM(reply), settings, tmp_path / "a.jsonl")
    assert all(r["evolution_step"] == 0 for r in read_generated(tmp_path / "a.jsonl").values())
    settings = GenerateSettings(templates=["exercise_code", "evolve_exercise"])
    broken = ScriptedLLM(lambda r: {"problem": "no other fields"})
    generate(units(2), tset, broken, settings, tmp_path / "b.jsonl")
    assert len(broken.calls) == 2  # nothing to evolve from malformed exercises


# --------------------------------------------------------------------------- budget


class BudgetLLM:
    """Yields ``allowed`` results at 1 USD each, then stops like the engine's budget cap."""

    model_name = "budget"

    def __init__(self, allowed: int) -> None:
        self.allowed = allowed
        self.inner = ScriptedLLM(reply, model_name="budget")

    def request_sha256(self, request: ChatRequest) -> str:
        return self.inner.request_sha256(request)

    def complete(self, request: ChatRequest) -> ChatResult:
        return self.inner.complete(request)

    def run(
        self, requests: Iterable[ChatRequest], *, max_cost: float | None = None
    ) -> Iterator[ChatResult]:
        for i, request in enumerate(requests):
            if i >= self.allowed:
                raise BudgetExceeded("budget reached")
            result = self.inner.complete(request)
            yield ChatResult(**{**result.__dict__, "cost": 1.0})


def test_budget_stop_keeps_finished_rows_and_stats(tset, tmp_path: Path) -> None:
    out = tmp_path / "gen.jsonl"
    settings = GenerateSettings(templates=["section"], documents_per_unit=1)
    stats = GenerateStats()
    with pytest.raises(BudgetExceeded):
        generate(units(4), tset, BudgetLLM(2), settings, out, max_cost=2.0, stats=stats)
    assert stats.received == 2 and stats.cost == 2.0
    assert len(read_generated(out)) == 2
    rest = ScriptedLLM(reply, model_name="budget")
    generate(units(4), tset, rest, settings, out)
    assert len(rest.calls) == 2
    # Another model is another prompt: everything is generated again with it.
    other = ScriptedLLM(reply, model_name="other")
    generate(units(4), tset, other, settings, out)
    assert len(other.calls) == 4


def test_rows_of_this_plan_exclude_older_runs(tset, tmp_path: Path) -> None:
    out = tmp_path / "gen.jsonl"
    settings = GenerateSettings(templates=["section"], documents_per_unit=1)
    generate(units(4), tset, ScriptedLLM(reply), settings, out)
    stats = generate(units(2), tset, ScriptedLLM(reply), settings, out)
    assert stats.sent == 0 and len(stats.request_ids) == 2
    rows = list(iter_generated(out, stats.request_ids))
    assert [r["request_id"] for r in rows] == stats.request_ids
    assert len(list(iter_generated(out))) == 4


def test_a_plan_that_draws_nothing_is_a_config_error(tset) -> None:
    # exercise_code excludes the socratic_dialogue style: nothing can be drawn.
    settings = GenerateSettings(templates=["exercise_code"], styles=["socratic_dialogue"])
    with pytest.raises(ConfigError, match="no template can be drawn"):
        plan_requests(units(2), tset, settings)


def test_complete_last_row_without_newline_is_kept(tset, tmp_path: Path) -> None:
    out = tmp_path / "gen.jsonl"
    settings = GenerateSettings(templates=["section"], documents_per_unit=1)
    generate(units(2), tset, ScriptedLLM(reply), settings, out)
    out.write_bytes(out.read_bytes().rstrip(b"\n"))
    llm = ScriptedLLM(reply)
    generate(units(3), tset, llm, settings, out)
    assert len(llm.calls) == 1
    assert [len(json.loads(line)) > 0 for line in out.read_text().splitlines()] == [True] * 3
