"""Taxonomy growth under review (builder/growth.py) and `corpus taxonomy
expand|review|approve|reject` (builder/cli/growth.py)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from builder import walk_topics
from builder.cli import main
from builder.errors import LLMError, ValidationError
from builder.growth import (
    approve_nodes,
    expand_node,
    expansion_request,
    find_duplicate,
    normalise_name,
    proposed_nodes,
    reject_nodes,
)
from builder.llm.fake import ScriptedLLM
from builder.records import ChatResult
from builder.taxonomy import Taxonomy, load_taxonomy, validate_taxonomy

MATH = """\
# Mathematics: curated by hand.
id: mathematics
name: Mathematics
level: discipline
children:
  - id: algebra
    name: Algebra
    level: subject  # the first subject
    children:
      - {id: polynomials, name: Polynomials, level: topic}
  - id: calculus
    name: Calculus
    level: subject
    prerequisites: [algebra]
    children:
      - {id: limits, name: Limits, level: topic}
"""

PHYSICS = """\
id: physics
name: Physics
level: discipline
children:
  - id: thermodynamics
    name: Thermodynamics
    level: subject
    children:
      - {id: heat, name: Heat, level: topic}
"""


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run where no corpus.toml is found, so the project's demo config does not apply."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


@pytest.fixture
def tax_dir(tmp_path: Path) -> Path:
    root = tmp_path / "taxonomy"
    root.mkdir()
    (root / "mathematics.yaml").write_text(MATH, encoding="utf-8")
    (root / "physics.yaml").write_text(PHYSICS, encoding="utf-8")
    return root


@pytest.fixture
def tax(tax_dir: Path) -> Taxonomy:
    return load_taxonomy(tax_dir)


def proposals(*names: str) -> dict:
    return {"children": [{"name": n, "description": f"About {n.lower()}."} for n in names]}


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


# -- names and duplicates ----------------------------------------------------------------------


def test_normalise_name() -> None:
    assert normalise_name("Theories of Numbers") == "theory number"
    assert normalise_name("  ＡＬＧＥＢＲＡ! ") == "algebra"  # NFKC folds full-width letters
    assert normalise_name("Probability & Statistics") == normalise_name("probability statistics")
    assert normalise_name("Physics") == normalise_name("physic")


@pytest.mark.parametrize(
    ("name", "duplicate_of"),
    [
        ("algebra", "algebra"),
        ("Algebras", "algebra"),
        ("ALGEBRA.", "algebra"),
        ("Calculus", "calculus"),
        ("Thermodynamic", "thermodynamics"),
        ("Thermodinamics", "thermodynamics"),  # typo
        ("Linear Algebra", None),  # a subset of words is not a duplicate
        ("Number Theory", None),
        ("Heat transfer", None),
    ],
)
def test_find_duplicate(tax: Taxonomy, name: str, duplicate_of: str | None) -> None:
    existing = {normalise_name(n.name): n.id for n in tax}
    assert find_duplicate(name, existing) == duplicate_of


@given(st.text(alphabet=st.characters(categories=["Lu", "Ll", "Zs", "Po"]), min_size=1))
def test_a_name_duplicates_its_own_variants(name: str) -> None:
    key = normalise_name(name)
    if not key:
        return
    existing = {key: "x"}
    assert find_duplicate(name.casefold(), existing) == "x"
    assert find_duplicate(f"  {name}!! ", existing) == "x"


# -- expand ------------------------------------------------------------------------------------


def test_request_lists_existing_children(tax: Taxonomy) -> None:
    req = expansion_request(tax, "mathematics", 5)
    prompt = req.messages[-1]["content"]
    assert "Mathematics" in prompt and "Algebra; Calculus" in prompt and "5 more subjects" in prompt
    assert req.schema["properties"]["children"]["maxItems"] == 5


def test_expand_adds_new_children_as_proposed(tax: Taxonomy, tax_dir: Path) -> None:
    llm = ScriptedLLM(
        [
            proposals(
                "Linear Algebra",
                "algebra",
                "Number Theory",
                "Theory of Numbers",
                "Thermodynamics",
                "Topology",
                "Topologies",
            )
        ],
        model_name="teacher-1",
    )
    report = expand_node(tax, llm, "mathematics", count=7)
    assert [p.id for p in report.added] == ["linear-algebra", "number-theory", "topology"]
    assert {p.name: p.duplicate_of for p in report.duplicates} == {
        "algebra": "algebra",
        "Theory of Numbers": "number-theory",
        "Thermodynamics": "thermodynamics",
        "Topologies": "topology",
    }
    text = (tax_dir / "mathematics.yaml").read_text()
    assert text.startswith("# Mathematics: curated by hand.")
    assert "level: subject  # the first subject" in text
    assert "status: proposed  # proposed by teacher-1 on " in text
    assert validate_taxonomy(tax_dir) == []
    new = load_taxonomy(tax_dir)
    assert new["number-theory"].status == "proposed"
    assert new["number-theory"].level == "subject"
    assert new["number-theory"].description == "About number theory."
    assert [n.id for n in proposed_nodes(new)] == ["linear-algebra", "number-theory", "topology"]


def test_expand_makes_unique_ids(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    (root / "m.yaml").write_text(
        "id: m\nname: M\nchildren:\n  - id: rings\n    name: Ring theory basics\n"
        "    children: [{id: x, name: X}]\n"
    )
    tax = load_taxonomy(root)
    report = expand_node(tax, ScriptedLLM([proposals("Rings")]), "m", count=1)
    assert [p.id for p in report.added] == ["rings-2"]


def test_dry_run_writes_nothing(tax: Taxonomy, tax_dir: Path) -> None:
    before = (tax_dir / "mathematics.yaml").read_text()
    report = expand_node(tax, ScriptedLLM([proposals("Topology")]), "mathematics", dry_run=True)
    assert [p.id for p in report.added] == ["topology"]
    assert (tax_dir / "mathematics.yaml").read_text() == before


def test_invalid_replies_are_retried_then_reported(tax: Taxonomy) -> None:
    bad = ChatResult("x", "invalid", text="{", error="not valid JSON")
    llm = ScriptedLLM([bad, proposals("Topology")])
    assert [p.id for p in expand_node(tax, llm, "mathematics").added] == ["topology"]
    assert [r.sample_index for r in llm.calls] == [0, 1]
    with pytest.raises(LLMError, match="'calculus' after 2 attempt"):
        expand_node(tax, ScriptedLLM([bad, {"children": []}]), "calculus")


# -- review, approve, reject -------------------------------------------------------------------


def test_builds_use_approved_nodes_only(tax: Taxonomy, tax_dir: Path) -> None:
    report = expand_node(tax, ScriptedLLM([proposals("Topology")]), "mathematics")
    grown = report.taxonomy
    assert "topology" not in {u.topic for u in walk_topics(grown, rounds=1)}
    _, approved = approve_nodes(grown, ["topology"])
    assert "topology" in {u.topic for u in walk_topics(approved, rounds=1)}


def test_review_approve_reject_cli(tax: Taxonomy, tax_dir: Path) -> None:
    expand_node(tax, ScriptedLLM([proposals("Topology", "Number Theory")]), "mathematics")
    expand_node(load_taxonomy(tax_dir), ScriptedLLM([proposals("Open sets")]), "topology", count=1)
    code, out, err = run_cli("taxonomy", "review", "--taxonomy", str(tax_dir))
    assert code == 0 and "3 proposed node(s)" in err
    lines = out.splitlines()
    f = tax_dir / "mathematics.yaml"
    assert lines[0].startswith(f"{f}:") and "topology (under mathematics) Topology" in lines[0]
    assert "open-sets (under topology) Open sets - About open sets." in lines[1]  # file order
    code, out, _ = run_cli("taxonomy", "review", "--json", "--taxonomy", str(tax_dir))
    assert json.loads(out.splitlines()[1])["path"] == "mathematics/topology/open-sets"

    code, out, err = run_cli("taxonomy", "approve", "open-sets", "--taxonomy", str(tax_dir))
    assert code == 0, err
    assert "approved open-sets" in out and "stays unused until topology is approved" in out

    # Rejecting topology would drop an approved descendant: refused, nothing written.
    before = f.read_text()
    code, out, err = run_cli("taxonomy", "reject", "topology", "--taxonomy", str(tax_dir))
    assert code == 2 and "approved descendants: open-sets" in err and f.read_text() == before
    # Rejecting an approved node is refused.
    code, _, err = run_cli("taxonomy", "reject", "calculus", "--taxonomy", str(tax_dir))
    assert code == 2 and "corpus taxonomy remove calculus" in err

    code, out, _ = run_cli("taxonomy", "reject", "number-theory", "--taxonomy", str(tax_dir))
    assert code == 0 and out.startswith("rejected number-theory")
    code, out, _ = run_cli("taxonomy", "approve", "--all", "--taxonomy", str(tax_dir))
    assert "approved topology" in out
    final = load_taxonomy(tax_dir)
    assert proposed_nodes(final) == [] and "number-theory" not in final
    assert "# proposed by scripted on" in f.read_text()  # the comment stays after approval


def test_reject_removes_proposed_subtrees(tax: Taxonomy, tax_dir: Path) -> None:
    grown = expand_node(tax, ScriptedLLM([proposals("Topology")]), "mathematics").taxonomy
    grown = expand_node(grown, ScriptedLLM([proposals("Open sets")]), "topology").taxonomy
    messages, after = reject_nodes(grown, ["topology", "open-sets"])
    assert messages == [
        f"rejected topology and 1 proposed descendant(s) ({grown['topology'].location})"
    ]
    assert "topology" not in after and "open-sets" not in after
    assert load_taxonomy(tax_dir).ids() == tax.ids()


def test_reject_refuses_a_prerequisite(tax: Taxonomy, tax_dir: Path) -> None:
    grown = expand_node(tax, ScriptedLLM([proposals("Topology")]), "mathematics").taxonomy
    f = tax_dir / "mathematics.yaml"
    f.write_text(f.read_text().replace("prerequisites: [algebra]", "prerequisites: [topology]"))
    with pytest.raises(ValidationError, match="prerequisite of calculus"):
        reject_nodes(load_taxonomy(tax_dir), ["topology"])
    assert grown is not None


def test_cli_expand_against_fake_server(tax_dir: Path, tmp_path: Path) -> None:
    from tests.support.fake_openai_server import FakeOpenAIServer

    reply = json.dumps(proposals("Topology", "Calculus"))
    with FakeOpenAIServer(responder=lambda body: reply) as srv:
        cfg = tmp_path / "corpus.toml"
        cfg.write_text(f'[llm]\nbase_url = "{srv.base_url}"\nmodel = "fake-model"\n')
        code, out, err = run_cli(
            "taxonomy", "expand", "mathematics", "--count", "2", "--config", str(cfg),
            "--taxonomy", str(tax_dir),
        )  # fmt: skip
        assert code == 0, err
        assert srv.count("chat") == 1
    assert out.splitlines() == [
        "proposed topology: Topology",
        "duplicate 'Calculus' (of calculus), skipped",
    ]
    assert "proposed by fake-model on" in (tax_dir / "mathematics.yaml").read_text()
