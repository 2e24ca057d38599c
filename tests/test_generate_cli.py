"""``corpus generate`` and ``corpus templates render`` end to end (fake OpenAI server)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from builder.cli import cli
from builder.stages.generate import read_run_generated
from builder.util.partitions import list_parts
from tests.support.fake_openai_server import FakeOpenAIServer

ROOT = Path(__file__).resolve().parent.parent

TAXONOMY = """
id: mathematics
name: Mathematics
level: discipline
children:
  - id: calculus
    name: Calculus
    level: subject
    description: Rates of change and accumulation.
    children:
      - id: limits
        name: Limits and continuity
        level: topic
        description: What it means for a function to approach a value, one-sided limits.
      - id: derivatives
        name: Derivatives
        level: topic
        description: The derivative as a rate of change, rules of differentiation.
  - id: algebra
    name: Algebra
    level: subject
    children:
      - id: linear-equations
        name: Linear equations
        level: topic
        description: Solving one-variable linear equations.
"""

SECTION = (
    "## Limits\n\nA limit describes the value that a function approaches as its input gets "
    "closer and closer to a point. Limits let us reason about behaviour near a point even "
    "when the function is not defined there.\n\n### Worked example\n\nTake f(x) = (x^2 - 1) "
    "/ (x - 1). At x = 1 the formula divides by zero, but for every other x it simplifies to "
    "x + 1. As x approaches 1 from either side, x + 1 approaches 2, so the limit is 2.\n\n"
    "### A common mistake\n\nMany students believe the limit must equal the value of the "
    "function at the point. The example shows otherwise: the limit exists although the value "
    "does not.\n\n### Summary\n\nA limit captures the trend of a function near a point."
)

EXERCISES = {
    "signature": {
        "problem": "Write a function that returns the sum of two integers, e.g. add(1, 2) = 3.",
        "signature": 'def add(a: int, b: int) -> int:\n    """Return a + b."""',
        "tests": "assert add(1, 2) == 3\nassert add(-1, 1) == 0",
        "solution": "def add(a: int, b: int) -> int:\n    return a + b",
    },
    "final_answer": {
        "problem": "A car travels 120 km in 2 hours. What is its average speed in km/h?",
        "worked_solution": "speed = distance / time\nspeed = 120 / 2\nspeed = 60",
        "final_answer": "60",
    },
    "answer": {
        "problem": "Why can a limit exist where the function itself is undefined?",
        "answer": "A limit looks only at values near the point, never at the point itself.",
    },
}


def responder(body: dict) -> str:
    rf = body.get("response_format") or {}
    schema = rf.get("schema") or (rf.get("json_schema") or {}).get("schema")
    if schema:
        for key, reply in EXERCISES.items():
            if key in schema["properties"]:
                return json.dumps(reply)
    return SECTION


@pytest.fixture
def project(tmp_path: Path):
    (tmp_path / "taxonomy").mkdir()
    (tmp_path / "taxonomy" / "mathematics.yaml").write_text(textwrap.dedent(TAXONOMY))
    with FakeOpenAIServer(responder=responder) as server:
        config = tmp_path / "corpus.toml"
        config.write_text(
            textwrap.dedent(
                f"""
                [llm]
                base_url = "{server.base_url}"
                model = "fake-model"

                [taxonomy]
                dir = "taxonomy"

                [syllabus]
                generate_missing = false

                [walk]
                seed = 3
                limit = 3

                [generate]
                templates_dir = "{ROOT / "templates"}"
                documents_per_unit = 3
                max_tokens = 256

                [filters]
                min_tokens = 20

                [verify]
                second_sample = false

                [output]
                dir = "out"
                run = "e2e"
                """
            )
        )
        yield tmp_path, config, server


def test_generate_command_end_to_end_and_resume(project, monkeypatch) -> None:
    """`corpus generate` writes the run's generation partitions; `corpus filter` splits them
    into kept and rejected partitions; rerunning sends nothing."""
    root, config, server = project
    monkeypatch.delenv("CORPUS_OUTPUT_DIR")  # use the config's [output] dir
    runner = CliRunner()
    result = runner.invoke(cli, ["generate", "--config", str(config)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["units"] == 3
    gen = summary["generate"]
    assert gen["planned"] == gen["sent"] == gen["received"] == server.count("chat") >= 9
    run = root / "out" / "e2e"
    assert Path(summary["run_dir"]) == run
    rows = read_run_generated(run)
    assert len(rows) == gen["planned"]
    kinds = {(r["kind"], r["exercise_type"]) for r in rows.values()}
    assert ("section", None) in kinds and ("exercise", "code") in kinds

    result = runner.invoke(cli, ["filter", "--config", str(config)])
    assert result.exit_code == 0, result.output
    counters = json.loads(result.output[result.output.index("{") :])["filter"]
    kept = pl.read_parquet(list_parts(run / "work" / "filter" / "kept")).to_dicts()
    rejected = pl.read_parquet(list_parts(run / "work" / "filter" / "rejected")).to_dicts()
    assert counters["kept"] == len(kept) > 0 and counters["rejected"] == len(rejected)
    assert len(kept) + len(rejected) == len(rows)
    assert all(r["stage"] and r["reason"] for r in rejected)
    assert counters["verified"] == sum(1 for d in kept if d["verified"] is True)
    code = [d for d in kept if d["exercise_type"] == "code"]
    assert code and all(d["verified"] is True for d in code)
    assert all(d["model"] == "fake-model" and d["taxonomy_path"] for d in kept)
    # Request bodies carry the template's schema as structured output, and seeds.
    bodies = server.requests
    assert all("seed" in b for b in bodies)
    assert any((b.get("response_format") or {}).get("type") for b in bodies)

    again = runner.invoke(cli, ["generate", "--config", str(config)])
    assert again.exit_code == 0, again.output
    summary2 = json.loads(again.output[again.output.index("{") :])
    assert summary2["generate"]["sent"] == 0
    assert summary2["generate"]["reused"] == gen["planned"]
    assert server.count("chat") == gen["sent"]


def test_generate_max_cost_stops_with_exit_3_and_resumes(project, monkeypatch) -> None:
    """--max-cost caps what `corpus generate` spends: it stops with exit code 3 and a line
    saying what was spent; rerunning without the cap finishes, resending nothing paid."""
    root, config, server = project
    monkeypatch.delenv("CORPUS_OUTPUT_DIR")
    text = config.read_text()
    config.write_text(
        text.replace(
            'model = "fake-model"',
            'model = "fake-model"\nmax_concurrency = 1\n'
            '[llm.prices."fake-model"]\ninput = 100.0\noutput = 100.0',
        )
    )
    from builder.cli import main

    with pytest.raises(SystemExit) as info:
        main(["generate", "--config", str(config), "--max-cost", "0.2"])
    assert info.value.code == 3
    paid = server.count("chat")
    assert 0 < paid < 9
    result = CliRunner().invoke(cli, ["generate", "--config", str(config)])
    assert result.exit_code == 0, result.output
    gen = json.loads(result.output[result.output.index("{") :])["generate"]
    assert gen["reused"] >= 1  # what the capped run finished was kept
    assert server.count("chat") == paid + gen["sent"] - gen["cached"]


def test_templates_render_prints_the_exact_request(project) -> None:
    _root, config, _server = project
    runner = CliRunner()
    args = ["templates", "render", "section", "--topic", "limits", "--config", str(config)]
    result = runner.invoke(cli, [*args, "--audience", "college", "--style", "lecture_notes"])
    assert result.exit_code == 0, result.output
    request = json.loads(result.output)
    assert request["metadata"]["topic"] == "limits"
    assert request["metadata"]["audience"] == "college"
    user = request["messages"][-1]["content"]
    assert "Limits and continuity" in user and "lecture notes" in user
    assert request["params"]["max_tokens"] == 256  # [generate] max_tokens applies
    again = runner.invoke(cli, [*args, "--audience", "college", "--style", "lecture_notes"])
    assert again.output == result.output
    evolve = runner.invoke(
        cli,
        ["templates", "render", "evolve_exercise", "--topic", "limits", "--config", str(config)],
    )
    assert evolve.exit_code == 0, evolve.output
    assert json.loads(evolve.output)["schema"]["required"]


def test_templates_render_errors(project) -> None:
    _root, config, _server = project
    runner = CliRunner()
    both = runner.invoke(cli, ["templates", "render", "section", "--config", str(config)])
    assert both.exit_code == 2 and "exactly one of --unit" in both.output
    from builder.cli import main

    with pytest.raises(SystemExit) as info:
        main(["templates", "render", "nope", "--topic", "limits", "--config", str(config)])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["templates", "render", "section", "--unit", "zzz", "--config", str(config)])
    assert info.value.code == 2


def test_path_flags_resolve_against_the_current_directory(
    project, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--templates/--taxonomy are relative to the cwd; config values to the config's folder."""
    root, config, _server = project
    cfg_dir = root / "cfg"
    cfg_dir.mkdir()
    moved = cfg_dir / "x.toml"
    moved.write_text(config.read_text().replace('dir = "taxonomy"', 'dir = "../taxonomy"'))
    monkeypatch.chdir(root)
    import shutil

    shutil.copytree(ROOT / "templates", root / "tpl")
    args = ["templates", "render", "section", "--topic", "limits", "--config", "cfg/x.toml"]
    result = CliRunner().invoke(cli, [*args, "--templates", "tpl", "--taxonomy", "taxonomy"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["metadata"]["topic"] == "limits"

    from builder.cli import main

    for argv in (
        [*args, "--templates", "tpl/undef"],
        ["generate", "--config", "cfg/x.toml", "--templates", "tpl/undef"],
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert f"{root / 'tpl' / 'undef'}: templates directory not found" in err
        assert "cfg/tpl" not in err


def test_unknown_topic_blames_the_flag_and_suggests(
    project, capsys: pytest.CaptureFixture[str]
) -> None:
    _root, config, _server = project
    from builder.cli import main

    with pytest.raises(SystemExit) as info:
        main(["templates", "render", "section", "--topic", "limts", "--config", str(config)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--topic limts: unknown taxonomy id" in err
    assert "did you mean limits" in err
    assert "[walk]" not in err and "corpus.toml" not in err
