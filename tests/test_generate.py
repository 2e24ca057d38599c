"""Generation: request plan, provenance rows, resume, transforms (the generate stage through
the real engine on the loopback fake server)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from builder.errors import ConfigError, LLMError
from builder.generate import plan_requests, request_id
from builder.records import DOCUMENT_COLUMNS, ChatRequest, Unit
from builder.settings.generate import GenerateSettings
from builder.templates import REQUIRED_FIELDS, load_templates, sample_units
from tests.support.fake_openai_server import FakeOpenAIServer

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


# --------------------------------------------------------------------------- the stage
# Generation runs as the build's generate stage, through the real engine (open_engine) on the
# loopback fake server: cache keys, schemas, retries and the budget are the real ones.


def fake_reply(body: dict) -> str:
    """The fake server's reply: a valid exercise for schema requests, else a section."""
    rf = body.get("response_format") or {}
    schema = rf.get("schema") or (rf.get("json_schema") or {}).get("schema") or {}
    props = set(schema.get("properties") or ())
    if "tests" in props:
        return json.dumps(REPLIES["code"])
    if "final_answer" in props:
        return json.dumps(REPLIES["quantitative"])
    if "answer" in props:
        return json.dumps(REPLIES["conceptual"])
    return SECTION


class Project:
    """A run directory whose walk partition holds the given units (the generate stage's
    input), with the fake server as the endpoint."""

    def __init__(self, root: Path, base_url: str, units: list[Unit], **generate: object) -> None:
        from builder.config import CorpusConfig
        from builder.stages.walk import UNIT_SCHEMA
        from builder.util.partitions import write_table

        (root / "taxonomy").mkdir(parents=True, exist_ok=True)
        (root / "taxonomy" / "mathematics.yaml").write_text(
            "id: mathematics\nname: Mathematics\nlevel: discipline\n"
        )
        self.root = root
        self.config = CorpusConfig.model_validate(
            {
                "llm": {"base_url": base_url, "model": "fake-model", "max_concurrency": 2},
                "taxonomy": {"dir": str(root / "taxonomy")},
                "generate": {"templates_dir": str(root / "templates"), **generate},
                "output": {"dir": str(root / "out"), "run": "t"},
            }
        )
        if not (root / "templates").exists():
            shutil.copytree(SHIPPED, root / "templates")
        self.run = root / "out" / "t"
        rows = [u.to_dict() for u in units]
        write_table(
            pa.Table.from_pylist(rows, schema=UNIT_SCHEMA),
            self.run / "work" / "walk" / "part-00000.parquet",
        )

    def generate(self, **kwargs: object) -> dict:
        from builder.run.build import run_stages
        from builder.stages.generate import GenerateStage

        cache = str(self.root / "cache")  # each project its own LLM cache
        summary = run_stages(
            self.config, [GenerateStage()], progress=False, cache_dir=cache, **kwargs
        )
        return summary.counters["generate"]

    def rows(self) -> dict[str, dict]:
        from builder.stages.generate import read_run_generated

        return read_run_generated(self.run)


@pytest.fixture
def server():
    with FakeOpenAIServer(responder=fake_reply) as srv:
        yield srv


def test_generate_writes_rows_with_full_provenance(tset, tmp_path: Path, server) -> None:
    project = Project(tmp_path, server.base_url, units(2), documents_per_unit=4, evolve=False)
    stats = project.generate()
    assert stats["sent"] == 8 == server.count("chat") and stats["by_status"] == {"ok": 8}
    rows = list(project.rows().values())
    assert len(rows) == 8
    for row in rows:
        for column in DOCUMENT_COLUMNS:
            assert column in row
        assert row["model"] == "fake-model" and row["request_sha256"]
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


def test_resume_sends_nothing_for_finished_requests(tmp_path: Path, server) -> None:
    project = Project(tmp_path, server.base_url, units(3), documents_per_unit=2)
    first = project.generate()
    before = project.rows()
    part = project.run / "work" / "generate" / "part-00000.parquet"
    stamp = part.stat().st_mtime_ns
    second = project.generate()
    assert server.count("chat") == first["sent"] > 0
    assert second["reused"] == second["planned"] == first["planned"] and second["sent"] == 0
    assert {k: v["created_at"] for k, v in project.rows().items()} == {
        k: v["created_at"] for k, v in before.items()
    }
    assert part.stat().st_mtime_ns == stamp  # nothing new: the partition is not rewritten


def test_journaled_results_are_kept_when_the_partition_was_not_written(
    tmp_path: Path, server
) -> None:
    """Results journaled before a stop (the partition file not written yet) are reused,
    here from a Parquet journal file as versions before the Arrow IPC journal wrote."""
    project = Project(tmp_path, server.base_url, units(2), documents_per_unit=2, evolve=False)
    project.generate()
    gen = project.run / "work" / "generate"
    journal = gen / "_journal"
    journal.mkdir(exist_ok=True)
    # As a kill would leave it: the finished rows in the journal, no partition file.
    (gen / "part-00000.parquet").rename(journal / "00000-00000.parquet")
    server.reset_counts()
    stats = project.generate()
    assert server.count("chat") == 0 and stats["reused"] == 4
    assert (gen / "part-00000.parquet").exists() and not list(journal.glob("*.parquet"))


def test_a_partition_that_cannot_be_written_stops_the_stage_and_keeps_its_journal(
    tmp_path: Path, server
) -> None:
    """The partition file is written in the background: its error still stops the stage,
    and the journal (the only copy of the results) stays until a later run writes it."""
    from builder.records import GENERATED_SCHEMA
    from builder.stages.generate import journal_files
    from builder.util.partitions import write_table

    project = Project(tmp_path, server.base_url, units(2), documents_per_unit=2, evolve=False)
    gen = project.run / "work" / "generate"
    # A directory where the partition file goes: renaming the written file onto it fails
    # (it reads as an empty partition, so every request is still sent).
    write_table(GENERATED_SCHEMA.empty_table(), gen / "part-00000.parquet" / "x.parquet")
    with pytest.raises(OSError):
        project.generate()
    assert server.count("chat") == 4
    assert journal_files(gen / "_journal") and len(project.rows()) == 4
    shutil.rmtree(gen / "part-00000.parquet")
    server.reset_counts()
    stats = project.generate()
    assert server.count("chat") == 0 and stats["reused"] == 4
    assert (gen / "part-00000.parquet").is_file() and not journal_files(gen / "_journal")


def test_failures_are_recorded_then_retried(tmp_path: Path, server) -> None:
    project = Project(
        tmp_path, server.base_url, units(2), templates=["section"], documents_per_unit=1
    )
    server.faults = lambda i, body: "400"  # a fatal client error: no retry
    with pytest.raises(LLMError, match="all 2 generation request"):
        project.generate()  # every request failed: the build stops with the cause
    rows = list(project.rows().values())
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert "400" in rows[0]["error"]
    server.faults = None
    server.reset_counts()
    project.generate()
    assert server.count("chat") == 2
    assert [r["status"] for r in project.rows().values()] == ["ok", "ok"]


def test_changed_template_is_regenerated(tmp_path: Path, server) -> None:
    project = Project(
        tmp_path, server.base_url, units(2), templates=["section"], documents_per_unit=1
    )
    project.generate()
    path = tmp_path / "templates" / "section.j2"
    path.write_text(path.read_text() + "Use British spelling.\n")
    changed = load_templates(tmp_path / "templates")
    server.reset_counts()
    project.generate()
    assert server.count("chat") == 2
    assert "British spelling" in server.requests[-1]["messages"][-1]["content"]
    rows = list(project.rows().values())
    assert len(rows) == 2 and all(r["template_sha256"] == changed["section"].sha256 for r in rows)


# --------------------------------------------------------------------------- transforms


def test_exercises_are_evolved_to_harder_levels(tset, tmp_path: Path, server) -> None:
    project = Project(
        tmp_path,
        server.base_url,
        units(2),
        templates=["exercise_code", "exercise_quantitative", "evolve_exercise"],
        documents_per_unit=2,
        evolution_steps=2,
    )
    stats = project.generate()
    by_id = {r["id"]: r for r in project.rows().values()}
    base = [r for r in by_id.values() if r["evolution_step"] == 0]
    step1 = [r for r in by_id.values() if r["evolution_step"] == 1]
    step2 = [r for r in by_id.values() if r["evolution_step"] == 2]
    assert len(base) == len(step1) == len(step2) == 4
    assert stats["waves"] == 3
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
    evolve = [b for b in server.requests if "How to make it harder" in json.dumps(b["messages"])]
    assert evolve and all((b.get("response_format") or {}).get("type") for b in evolve)
    parent = by_id[step1[0]["parent_id"]]
    assert any(parent["structured"]["problem"] in b["messages"][-1]["content"] for b in evolve)
    # Resume covers the later waves too.
    server.reset_counts()
    project.generate()
    assert server.count("chat") == 0


def test_evolve_off_and_invalid_parents_are_not_evolved(tmp_path: Path, server) -> None:
    off = Project(
        tmp_path / "a",
        server.base_url,
        units(2),
        templates=["exercise_code", "evolve_exercise"],
        evolve=False,
    )
    off.generate()
    assert all(r["evolution_step"] == 0 for r in off.rows().values())
    server.responder = lambda body: json.dumps({"problem": "no other fields"})
    broken = Project(
        tmp_path / "b", server.base_url, units(2), templates=["exercise_code", "evolve_exercise"]
    )
    server.reset_counts()
    broken.generate()
    rows = broken.rows().values()
    assert len(rows) == 2 and all(r["evolution_step"] == 0 for r in rows)
    assert all(r["status"] == "invalid" for r in rows)  # nothing to evolve from malformed


def test_another_model_regenerates_everything(tmp_path: Path, server) -> None:
    """A result is reused only for the same prompt and model."""
    project = Project(
        tmp_path, server.base_url, units(2), templates=["section"], documents_per_unit=1
    )
    project.generate()
    project.config = project.config.model_copy(
        update={"llm": project.config.llm.model_copy(update={"model": "other-model"})}
    )
    server.reset_counts()
    stats = project.generate()
    assert stats["reused"] == 0 and server.count("chat") == 2


def test_a_plan_that_draws_nothing_is_a_config_error(tset) -> None:
    # exercise_code excludes the socratic_dialogue style: nothing can be drawn.
    settings = GenerateSettings(templates=["exercise_code"], styles=["socratic_dialogue"])
    with pytest.raises(ConfigError, match="no template can be drawn"):
        plan_requests(units(2), tset, settings)
