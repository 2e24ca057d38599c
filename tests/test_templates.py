"""Templates: the shipped set, every check (file:line), sandboxing and rendering."""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.cli import cli
from builder.errors import TemplateError, ValidationError
from builder.templates import (
    REQUIRED_FIELDS,
    check_templates,
    harder,
    load_templates,
    render_structured,
    sample_transform_extra,
    sample_units,
    structured_problem,
)

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "templates"


@pytest.fixture
def tdir(tmp_path: Path) -> Path:
    """A copy of the shipped templates to break."""
    target = tmp_path / "templates"
    shutil.copytree(SHIPPED, target)
    return target


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems_of(directory: Path) -> list[str]:
    _tset, problems = check_templates(directory)
    return [str(p) for p in problems]


# --------------------------------------------------------------------------- shipped set


def test_shipped_templates_pass_every_check() -> None:
    tset, problems = check_templates(SHIPPED)
    assert problems == []
    assert tset is not None
    kinds = {t.kind for t in tset}
    assert {"section", "exercise", "transform", "system"} <= kinds
    types = {t.exercise_type for t in tset if t.kind == "exercise"}
    assert types == {"code", "quantitative", "conceptual"}
    assert len(tset.audiences) >= 4 and len(tset.styles) >= 3
    assert {"young_learners", "high_school", "college", "professional"} <= set(tset.audiences)
    assert {"textbook", "lecture_notes", "worked_walkthrough"} <= set(tset.styles)
    assert len(tset.openers["section"]) >= 5 and len(tset.openers["exercise"]) >= 4


def test_exercise_schemas_carry_the_verification_fields() -> None:
    tset = load_templates(SHIPPED)
    for t in tset:
        if t.kind == "exercise":
            schema = t.front.json_schema
            assert schema is not None
            assert set(REQUIRED_FIELDS[t.exercise_type]) <= set(schema["required"])
    assert REQUIRED_FIELDS["code"] == ("problem", "signature", "tests", "solution")
    assert REQUIRED_FIELDS["quantitative"] == ("problem", "worked_solution", "final_answer")


def test_render_is_deterministic_and_varies_with_inputs() -> None:
    tset = load_templates(SHIPPED)
    unit = sample_units()[0]
    a = tset.render("section", unit, audience="college", style="textbook", opener="Open X.")
    b = tset.render("section", unit, audience="college", style="textbook", opener="Open X.")
    assert a == b
    assert a.messages[0]["role"] == "system" and a.messages[-1]["role"] == "user"
    user = a.messages[-1]["content"]
    for concept in unit.concepts:
        assert concept in user
    assert unit.topic_name in user and "Open X." in user
    assert tset.audiences["college"].guidance.split(".")[0] in user
    others = {
        tset.render("section", unit, audience=aud, style=sty).messages[-1]["content"]
        for aud in tset.audiences
        for sty in tset.styles
    }
    assert len(others) == len(tset.audiences) * len(tset.styles)
    other_unit = tset.render("section", sample_units()[1], audience="college", style="textbook")
    assert other_unit.messages[-1]["content"] != user


def test_render_gives_the_text_jinja_s_own_render_gives(monkeypatch) -> None:
    """The render path (one context dict, the compiled template kept) writes exactly what
    ``Template.render`` writes, for every shipped template, audience and style (a fresh
    set each time, so no render is reused from the other path's caches)."""
    import builder.templates.model as model

    plain: list[str] = []
    for render in (model._render, lambda template, context: template.render(context)):
        monkeypatch.setattr(model, "_render", render)
        tset = load_templates(SHIPPED)
        sources = {
            t.exercise_type: t.name for t in tset if t.kind == "exercise" and t.exercise_type
        }
        out = []
        for template in tset:
            if template.kind == "system":
                continue  # rendered through the templates that use it
            extra = source = None
            if template.kind == "transform":
                ex_type, source = next(iter(sources.items()))
                extra = {**sample_transform_extra(ex_type, sample_units()[0])}
                extra["exercise_type"] = ex_type
            for unit in sample_units()[:2]:
                for aud in tset.audiences_for(template):
                    for sty in tset.styles_for(template):
                        got = tset.render(
                            template.name, unit, audience=aud, style=sty,
                            extra=extra, source=source,
                        )  # fmt: skip
                        out.append(repr(got.messages))
        plain.append("\n".join(out))
    assert plain[0] == plain[1] and len(plain[0]) > 1000


def test_openers_are_seeded_and_varied() -> None:
    tset = load_templates(SHIPPED)
    section = tset["section"]
    assert tset.pick_opener(section, "id-1") == tset.pick_opener(section, "id-1")
    picked = {tset.pick_opener(section, f"id-{i}") for i in range(60)}
    assert len(picked) >= 5


def test_json_templates_send_their_schema_and_params() -> None:
    tset = load_templates(SHIPPED)
    r = tset.render("exercise_code", sample_units()[1], audience="college", style="textbook")
    assert r.schema is not None and r.schema["required"] == list(REQUIRED_FIELDS["code"])
    assert r.params["max_tokens"] == tset["exercise_code"].front.params.max_tokens
    assert "temperature" in r.params


def test_transform_inherits_the_source_schema() -> None:
    tset = load_templates(SHIPPED)
    unit = sample_units()[0]
    for ex_type, source in (("code", "exercise_code"), ("quantitative", "exercise_quantitative")):
        extra = {**sample_transform_extra(ex_type, unit), "exercise_type": ex_type}
        r = tset.render(
            "evolve_exercise",
            unit,
            audience="college",
            style="textbook",
            extra=extra,
            source=source,
        )
        assert r.schema == tset.render(source, unit, audience="college", style="textbook").schema
        user = r.messages[-1]["content"]
        assert extra["target_difficulty"] in user and "Add one more constraint." in user


def test_template_sha_changes_with_template_and_shared_files(tdir: Path) -> None:
    before = load_templates(tdir)["section"].sha256
    path = tdir / "section.j2"
    path.write_text(path.read_text() + "\nOne more line.\n")
    after = load_templates(tdir)["section"].sha256
    assert before != after
    aud = tdir / "_audiences.yaml"
    aud.write_text(aud.read_text() + "\n# a comment\n")
    assert load_templates(tdir)["section"].sha256 != after


# --------------------------------------------------------------------------- checks


def test_syntax_error_is_reported_at_its_file_line(tdir: Path) -> None:
    write(
        tdir,
        "broken.j2",
        """
        ---
        kind: section
        description: broken
        ---
        Hello {{ topic_name }}
        {% if concepts %}
        never closed
        """,
    )
    problems = problems_of(tdir)
    assert len(problems) == 1
    assert problems[0].startswith(f"{tdir / 'broken.j2'}:7: template syntax error")


def test_undefined_variable_reported_with_line(tdir: Path) -> None:
    write(
        tdir,
        "typo.j2",
        """
        ---
        kind: section
        description: typo
        ---
        About {{ topic_name }}.

        {% for c in concepts %}{{ c }}{% endfor %}
        Written for {{ audiance.name }}.
        """,
    )
    problems = problems_of(tdir)
    assert problems == [p for p in problems if "typo.j2:8: undefined variable 'audiance'" in p]
    assert len(problems) == 1


def test_unsafe_attribute_is_reported_statically_in_any_branch(tdir: Path) -> None:
    write(
        tdir,
        "unsafe.j2",
        """
        ---
        kind: section
        description: unsafe
        ---
        About {{ topic_name }}.
        {% if false %}{{ unit.__class__.__mro__ }}{% endif %}
        """,
    )
    problems = problems_of(tdir)
    assert any("unsafe.j2:6: unsafe attribute access '__class__'" in p for p in problems)


def test_sandbox_render_reports_runtime_unsafe_access(tdir: Path) -> None:
    # |attr() hides the name from the static check: the sandboxed render still catches it.
    write(
        tdir,
        "sneaky.j2",
        """
        ---
        kind: section
        description: sneaky
        ---
        About {{ topic_name }}.
        {{ unit | attr("__class__") }}
        """,
    )
    problems = problems_of(tdir)
    assert len(problems) == 1
    assert "sneaky.j2:6: unsafe access in template" in problems[0]
    assert "__class__" in problems[0]


def test_runtime_error_only_for_some_units_is_found(tdir: Path) -> None:
    # Sample units include one without concepts: indexing them fails at render time.
    write(
        tdir,
        "fragile.j2",
        """
        ---
        kind: section
        description: fragile
        ---
        About {{ topic_name }}.
        First concept: {{ concepts[0].upper() }}
        """,
    )
    problems = problems_of(tdir)
    assert len(problems) == 1 and "fragile.j2:6:" in problems[0]


def test_front_matter_unknown_key_and_bad_value_have_lines(tdir: Path) -> None:
    write(
        tdir,
        "front.j2",
        """
        ---
        kind: section
        description: front-matter errors
        params:
          temperature: 0.5
          temprature: 0.7
        output: prose
        ---
        Hi {{ topic_name }}
        """,
    )
    problems = problems_of(tdir)
    assert any("front.j2:6: unknown key 'params.temprature'" in p for p in problems)
    assert any("front.j2:7: bad value for 'output'" in p for p in problems)


def test_yaml_error_line_is_offset_by_the_front_matter(tdir: Path) -> None:
    write(
        tdir,
        "yaml.j2",
        """
        ---
        kind: section
        description: fine
        audiences: [college
        ---
        Hi
        """,
    )
    problems = problems_of(tdir)
    assert len(problems) == 1
    assert problems[0].startswith(f"{tdir / 'yaml.j2'}:5: invalid YAML")


def test_missing_front_matter_and_missing_keys(tdir: Path) -> None:
    write(tdir, "bare.j2", "Just a body {{ topic_name }}\n")
    write(tdir, "nokind.j2", "---\ndescription: no kind\n---\nHi\n")
    problems = problems_of(tdir)
    assert any("bare.j2:1: template must start with YAML front-matter" in p for p in problems)
    assert any("nokind.j2:2: missing key 'kind'" in p for p in problems)


def test_unknown_audience_style_and_system_are_reported(tdir: Path) -> None:
    write(
        tdir,
        "refs.j2",
        """
        ---
        kind: section
        description: references
        audiences: [college, pirates]
        styles: [haiku]
        system: nosuchsystem
        ---
        Hi
        """,
    )
    problems = problems_of(tdir)
    assert any("refs.j2:4: unknown audience 'pirates'" in p for p in problems)
    assert any("refs.j2:5: unknown style 'haiku'" in p for p in problems)
    assert any("refs.j2:6: system template 'nosuchsystem' not found" in p for p in problems)


def test_exercise_schema_must_carry_the_contract_fields(tdir: Path) -> None:
    write(
        tdir,
        "ex.j2",
        """
        ---
        kind: exercise
        exercise_type: quantitative
        description: missing final_answer
        output: json
        schema:
          type: object
          properties:
            problem: {type: string}
            worked_solution: {type: string}
          required: [problem, worked_solution]
        ---
        Hi
        """,
    )
    problems = problems_of(tdir)
    assert len(problems) == 1
    assert "ex.j2:6: schema lacks the quantitative exercise fields: final_answer" in problems[0]


def test_consistency_rules_of_front_matter(tdir: Path) -> None:
    write(tdir, "a.j2", "---\nkind: exercise\ndescription: no type\n---\nHi\n")
    write(tdir, "b.j2", "---\nkind: section\ndescription: json\noutput: json\n---\nHi\n")
    problems = problems_of(tdir)
    assert any("a.j2:" in p and "needs exercise_type" in p for p in problems)
    assert any("b.j2:" in p and "needs a schema" in p for p in problems)


def test_shared_audience_file_errors(tdir: Path) -> None:
    path = tdir / "_audiences.yaml"
    path.write_text(path.read_text() + "\npirates:\n  name: pirates\n  descripton: arr\n")
    problems = problems_of(tdir)
    assert any("_audiences.yaml" in p and "pirates" in p for p in problems)


def test_load_templates_raises_all_problems(tdir: Path) -> None:
    write(tdir, "x.j2", "---\nkind: section\ndescription: x\n---\n{{ nope }}\n")
    write(tdir, "y.j2", "---\nkind: section\ndescription: y\n---\n{{ nope2 }}\n")
    with pytest.raises(ValidationError) as info:
        load_templates(tdir)
    assert len(info.value.problems) == 2
    with pytest.raises(TemplateError):
        load_templates(tdir.parent / "missing")


def test_adding_an_audience_is_one_yaml_entry(tdir: Path) -> None:
    path = tdir / "_audiences.yaml"
    path.write_text(
        path.read_text()
        + "\nretirees:\n  name: curious retirees\n  description: Lifelong learners.\n"
        + "  guidance: Be patient and concrete.\n"
    )
    tset = load_templates(tdir)
    r = tset.render("section", sample_units()[0], audience="retirees", style="textbook")
    assert "curious retirees" in r.messages[-1]["content"]
    assert "Be patient and concrete." in r.messages[-1]["content"]


# --------------------------------------------------------------------------- helpers


def test_harder_always_increases() -> None:
    assert harder("basic") == "intermediate"
    assert harder("beginner") == "intermediate"
    assert harder("intermediate") == "advanced"
    assert harder("advanced", 2) == "expert+1"
    assert harder("expert") == "expert+1"
    assert harder("expert+1") == "expert+2"
    assert harder("introductory") == "intermediate"
    assert harder("graduate") == "graduate+1"


def test_structured_rendering_and_validation() -> None:
    code = {
        "problem": "Add.",
        "signature": "```python\ndef add(a, b):\n```",
        "tests": "assert add(1, 2) == 3",
        "solution": "def add(a, b):\n    return a + b",
    }
    text = render_structured("code", code)
    assert text.index("Add.") < text.index("### Tests") < text.index("### Solution")
    assert "```python\ndef add(a, b):\n```" in text  # inner fence removed, one fence kept
    assert structured_problem("code", code) is None
    assert structured_problem("code", {**code, "tests": "  "}) == "empty field(s): tests"
    assert structured_problem("code", ["x"]) == "output is not a JSON object"
    assert "missing field(s): final_answer" in structured_problem(
        "quantitative", {"problem": "p", "worked_solution": "w"}
    )
    quant = {"problem": "p", "worked_solution": "w", "final_answer": 4}
    assert structured_problem("quantitative", quant) is None
    assert render_structured("quantitative", quant).endswith("**Final answer:** 4")


# --------------------------------------------------------------------------- CLI


def test_cli_check_ok_and_errors(tdir: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(cli, ["templates", "check", "--templates", str(SHIPPED)])
    assert ok.exit_code == 0, ok.output
    assert ok.output.startswith("ok: 6 templates")
    write(tdir, "bad.j2", "---\nkind: section\ndescription: x\n---\nHi\n{{ unit.__class__ }}\n")
    from builder.cli import main

    with pytest.raises(SystemExit) as info:
        main(["templates", "check", "--templates", str(tdir)])
    assert info.value.code == 2


def test_cli_check_prints_file_line(tdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from builder.cli import main

    write(tdir, "bad.j2", "---\nkind: section\ndescription: x\n---\nHi\n{{ topik }}\n")
    with pytest.raises(SystemExit):
        main(["templates", "check", "--templates", str(tdir)])
    err = capsys.readouterr().err
    assert f"{tdir / 'bad.j2'}:6: undefined variable 'topik'" in err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- README


def _readme_blocks(language: str) -> list[str]:
    text = (SHIPPED / "README.md").read_text(encoding="utf-8")
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_readme_examples_work(tdir: Path) -> None:
    (template,) = _readme_blocks("jinja")
    (audience,) = _readme_blocks("yaml")
    (tdir / "glossary.j2").write_text(template, encoding="utf-8")
    path = tdir / "_audiences.yaml"
    path.write_text(path.read_text() + "\n" + audience, encoding="utf-8")
    tset = load_templates(tdir)
    assert tset["glossary"].kind == "section"
    r = tset.render("glossary", sample_units()[0], audience="retirees", style="lecture_notes")
    user = r.messages[-1]["content"]
    assert "curious retirees" in user and "epsilon-delta definition" in user
    assert r.params["max_tokens"] == 600


def test_jinja_globals_are_allowed_and_sandboxed(tdir: Path) -> None:
    write(
        tdir,
        "globals.j2",
        """
        ---
        kind: section
        description: uses range and namespace
        ---
        {% set ns = namespace(n=0) %}
        {% for i in range(3) %}{% set ns.n = ns.n + i %}{% endfor %}
        About {{ topic_name }}: {{ ns.n }}
        """,
    )
    assert problems_of(tdir) == []
    write(
        tdir,
        "escape.j2",
        """
        ---
        kind: section
        description: tries to escape through a global
        ---
        {{ cycler | attr("__init__") | attr("__globals__") }}
        """,
    )
    problems = problems_of(tdir)
    assert len(problems) == 1 and "escape.j2:5: unsafe access in template" in problems[0]


@pytest.mark.parametrize("shared", ["_audiences.yaml", "_styles.yaml"])
def test_cli_empty_shared_file_is_a_file_line_error(
    tdir: Path, shared: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty _audiences.yaml used to end in an AssertionError traceback."""
    from builder.cli import main

    (tdir / shared).write_text("", encoding="utf-8")
    taxonomy = str(ROOT / "taxonomy")
    for argv in (
        ["templates", "check", "--templates", str(tdir)],
        ["templates", "render", "section", "--topic", "calculus", "--templates", str(tdir)]
        + ["--taxonomy", taxonomy],
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "AssertionError" not in err
        lines = err.strip().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith(f"{tdir / shared}:1: empty shared file")
