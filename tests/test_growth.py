"""Taxonomy growth under review (builder/growth.py) and `corpus taxonomy
expand|review|approve|reject` (builder/cli/growth.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from builder import walk_topics
from builder.errors import LLMError, ValidationError
from builder.growth import (
    approve_nodes,
    expand_node,
    expansion_request,
    find_duplicate,
    malformed,
    normalise_name,
    proposed_nodes,
    reject_nodes,
)
from builder.taxonomy import Taxonomy, load_taxonomy, validate_taxonomy
from tests.support.engine import config_for, fake_engine, is_repair, json_reply, prompt_of
from tests.support.fake_openai_server import FakeOpenAIServer
from tests.support.taxonomies import run_cli, write_taxonomy


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run where no corpus.toml is found, so the project's demo config does not apply."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


@pytest.fixture
def tax_dir(tmp_path: Path) -> Path:
    return write_taxonomy(tmp_path / "taxonomy")


@pytest.fixture
def tax(tax_dir: Path) -> Taxonomy:
    return load_taxonomy(tax_dir)


def proposals(*names: str) -> dict:
    return {"children": [{"name": n, "description": f"About {n.lower()}."} for n in names]}


def expand(tax: Taxonomy, tmp_path: Path, node: str, *names: str, **kwargs: Any):
    """expand_node through the real engine on a fake server that proposes ``names``."""
    reply = json_reply(lambda body: proposals(*names))
    with FakeOpenAIServer(responder=reply) as srv, fake_engine(srv, tmp_path) as llm:
        return expand_node(tax, llm, node, **kwargs)


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
        ("Oscillation", "oscillations"),
        ("Oscilations", "oscillations"),  # typo
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
    assume(key)  # punctuation or stop words only: nothing to compare
    existing = {key: "x"}
    assert find_duplicate(name.casefold(), existing) == "x"
    assert find_duplicate(f"  {name}!! ", existing) == "x"


# -- expand (the real engine against the loopback fake server) -------------------------------


def test_request_lists_existing_children(tax: Taxonomy) -> None:
    req = expansion_request(tax, "mathematics", 5)
    prompt = req.messages[-1]["content"]
    assert "Mathematics" in prompt and "Algebra; Calculus; Topology" in prompt
    assert "5 more subjects" in prompt
    assert req.schema["properties"]["children"]["maxItems"] == 5


def test_expand_adds_new_children_as_proposed(tax: Taxonomy, tax_dir: Path, tmp_path: Path) -> None:
    names = ("Linear Algebra", "algebra", "Number Theory", "Theory of Numbers", "Waves",
             "Geometry", "Geometries")  # fmt: skip
    with FakeOpenAIServer(
        responder=json_reply(lambda b: proposals(*names)), model="teacher-1"
    ) as srv:
        with fake_engine(srv, tmp_path) as llm:
            report = expand_node(tax, llm, "mathematics", count=7)
    assert srv.count("chat") == 1 and "more subjects of Mathematics" in prompt_of(srv.requests[0])
    assert [p.id for p in report.added] == ["linear-algebra", "number-theory", "geometry"]
    assert {p.name: p.duplicate_of for p in report.duplicates} == {
        "algebra": "algebra",
        "Theory of Numbers": "number-theory",
        "Waves": "waves",
        "Geometries": "geometry",
    }
    assert report.summary() == "asked 7, got 3 usable under mathematics (4 duplicate(s))"
    text = (tax_dir / "mathematics.yaml").read_text()
    assert text.startswith("# Mathematics (shared test taxonomy): curated by hand.")
    assert "level: subject  # the first subject" in text
    assert "status: proposed  # proposed by teacher-1 on " in text
    assert validate_taxonomy(tax_dir) == []
    new = load_taxonomy(tax_dir)
    assert new["number-theory"].status == "proposed"
    assert new["number-theory"].level == "subject"
    assert new["number-theory"].description == "About number theory."
    assert [n.id for n in proposed_nodes(new)] == [
        "integrals", "topology", "linear-algebra", "number-theory", "geometry"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "description", "reason"),
    [
        ("<n1>", "A node.", "the name has brackets or a placeholder"),
        ("<n2", "A node.", "the name has brackets or a placeholder"),
        ("math_20-35", "A node.", "the name has stray punctuation"),
        ("Graph theory", "In {subject}.", "the description has brackets or a placeholder"),
        ("Sets -", "A node.", "the name has stray punctuation"),
        ("X", "A node.", "the name is not words"),
        ("Number Theory", "Integers.", None),
        ("Probability (discrete)", "Counting.", None),
        ("C++ for scientists", "Programming.", None),
    ],
)
def test_malformed_names(name: str, description: str, reason: str | None) -> None:
    assert malformed(name, description) == reason


def test_expand_refuses_malformed_names_and_says_how_many_are_usable(
    tax_dir: Path, tmp_path: Path
) -> None:
    reply = {
        "children": [
            {"name": "<n1>", "description": "First."},
            {"name": "Number Theory", "description": "Integers."},
            {"name": "math_20-35", "description": "Ages."},
            {"name": "Geometry", "description": "Shapes in {subject}."},
        ]
    }
    with FakeOpenAIServer(responder=json_reply(lambda b: reply)) as srv:
        cfg = config_for(srv, tmp_path / "corpus.toml")
        code, out, err = run_cli("taxonomy", "expand", "mathematics", "--count", "5",
                                 "--config", str(cfg), "--taxonomy", str(tax_dir))  # fmt: skip
    assert code == 0, err
    assert out.splitlines() == [
        "refused '<n1>': the name has brackets or a placeholder",
        "proposed number-theory: Number Theory",
        "refused 'math_20-35': the name has stray punctuation",
        "refused 'Geometry': the description has brackets or a placeholder",
    ]
    assert err.splitlines()[0] == (
        "asked 5, got 1 usable under mathematics (3 refused: '<n1>': the name has brackets "
        "or a placeholder; 'math_20-35': the name has stray punctuation; 'Geometry': the "
        "description has brackets or a placeholder; the model proposed 4)"
    )
    new = load_taxonomy(tax_dir)
    assert "number-theory" in new and "n1" not in new and "math-20-35" not in new


def test_expand_makes_unique_ids(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    (root / "m.yaml").write_text(
        "id: m\nname: M\nchildren:\n  - id: rings\n    name: Ring theory basics\n"
        "    children: [{id: x, name: X}]\n"
    )
    tax = load_taxonomy(root)
    report = expand(tax, tmp_path, "m", "Rings", count=1)
    assert [p.id for p in report.added] == ["rings-2"]


def test_dry_run_writes_nothing(tax: Taxonomy, tax_dir: Path, tmp_path: Path) -> None:
    before = (tax_dir / "mathematics.yaml").read_text()
    report = expand(tax, tmp_path, "mathematics", "Geometry", dry_run=True)
    assert [p.id for p in report.added] == ["geometry"]
    assert (tax_dir / "mathematics.yaml").read_text() == before


def test_invalid_replies_are_repaired_retried_then_reported(tax: Taxonomy, tmp_path: Path) -> None:
    def reply(body: dict[str, Any]) -> str:
        # Sample 0 (seed 0) answers broken JSON, also to the engine's repair retry.
        return "{" if body["seed"] == 0 else json.dumps(proposals("Geometry"))

    with FakeOpenAIServer(responder=reply) as srv, fake_engine(srv, tmp_path) as llm:
        assert [p.id for p in expand_node(tax, llm, "mathematics").added] == ["geometry"]
        assert [(b["seed"], is_repair(b)) for b in srv.requests] == [
            (0, False),
            (0, True),
            (1, False),
        ]
        srv.responder = json_reply(lambda b: {"children": []})
        with pytest.raises(LLMError, match="'calculus' after 2 attempt"):
            expand_node(tax, llm, "calculus")


# -- review, approve, reject -------------------------------------------------------------------


def test_builds_use_approved_nodes_only(tax: Taxonomy, tmp_path: Path) -> None:
    grown = expand(tax, tmp_path, "mathematics", "Geometry").taxonomy
    assert grown is not None
    assert "geometry" not in {u.topic for u in walk_topics(grown, rounds=1)}
    _, approved = approve_nodes(grown, ["geometry"])
    assert "geometry" in {u.topic for u in walk_topics(approved, rounds=1)}


def test_review_approve_reject_cli(tax: Taxonomy, tax_dir: Path, tmp_path: Path) -> None:
    expand(tax, tmp_path / "a", "mathematics", "Geometry", "Number Theory")
    expand(load_taxonomy(tax_dir), tmp_path / "b", "geometry", "Euclidean plane", count=1)
    code, out, err = run_cli("taxonomy", "review", "--taxonomy", str(tax_dir))
    assert code == 0 and "5 proposed node(s)" in err  # integrals and topology were already
    lines = out.splitlines()
    f = tax_dir / "mathematics.yaml"
    assert lines[2].startswith(f"{f}:") and "geometry (under mathematics) Geometry" in lines[2]
    assert "euclidean-plane (under geometry) Euclidean plane - About euclidean plane." in lines[3]
    code, out, _ = run_cli("taxonomy", "review", "--json", "--taxonomy", str(tax_dir))
    assert json.loads(out.splitlines()[3])["path"] == "mathematics/geometry/euclidean-plane"

    code, out, err = run_cli("taxonomy", "approve", "euclidean-plane", "--taxonomy", str(tax_dir))
    assert code == 0, err
    assert "approved euclidean-plane" in out and "stays unused until geometry is approved" in out

    # Rejecting geometry would drop an approved descendant: refused, nothing written.
    before = f.read_text()
    code, out, err = run_cli("taxonomy", "reject", "geometry", "--taxonomy", str(tax_dir))
    assert code == 2 and "approved descendants: euclidean-plane" in err and f.read_text() == before
    # Rejecting an approved node is refused.
    code, _, err = run_cli("taxonomy", "reject", "calculus", "--taxonomy", str(tax_dir))
    assert code == 2 and "corpus taxonomy remove calculus" in err

    code, out, _ = run_cli("taxonomy", "reject", "number-theory", "--taxonomy", str(tax_dir))
    assert code == 0 and out.startswith("rejected number-theory")
    code, out, _ = run_cli("taxonomy", "approve", "--all", "--taxonomy", str(tax_dir))
    assert "approved geometry" in out
    final = load_taxonomy(tax_dir)
    assert proposed_nodes(final) == [] and "number-theory" not in final
    assert "# proposed by fake-model on" in f.read_text()  # the comment stays after approval


def test_reject_removes_proposed_subtrees(tax: Taxonomy, tax_dir: Path, tmp_path: Path) -> None:
    grown = expand(tax, tmp_path / "a", "mathematics", "Geometry").taxonomy
    grown = expand(grown, tmp_path / "b", "geometry", "Euclidean plane").taxonomy
    messages, after = reject_nodes(grown, ["geometry", "euclidean-plane"])
    assert messages == [
        f"rejected geometry and 1 proposed descendant(s) ({grown['geometry'].location})"
    ]
    assert "geometry" not in after and "euclidean-plane" not in after
    assert load_taxonomy(tax_dir).ids() == tax.ids()


def test_reject_refuses_a_prerequisite(tax: Taxonomy, tax_dir: Path, tmp_path: Path) -> None:
    grown = expand(tax, tmp_path, "mathematics", "Geometry").taxonomy
    assert grown is not None and "geometry" in grown
    f = tax_dir / "mathematics.yaml"
    f.write_text(f.read_text().replace("prerequisites: [algebra]", "prerequisites: [geometry]"))
    with pytest.raises(ValidationError, match="prerequisite of calculus"):
        reject_nodes(load_taxonomy(tax_dir), ["geometry"])


def test_cli_expand_against_fake_server(tax_dir: Path, tmp_path: Path) -> None:
    reply = json.dumps(proposals("Geometry", "Calculus"))
    with FakeOpenAIServer(responder=lambda body: reply) as srv:
        cfg = config_for(srv, tmp_path / "corpus.toml")
        code, out, err = run_cli(
            "taxonomy", "expand", "mathematics", "--count", "2", "--config", str(cfg),
            "--taxonomy", str(tax_dir),
        )  # fmt: skip
        assert code == 0, err
        assert srv.count("chat") == 1
    assert out.splitlines() == [
        "proposed geometry: Geometry",
        "duplicate 'Calculus' (of calculus), skipped",
    ]
    assert err.splitlines()[0] == "asked 2, got 1 usable under mathematics (1 duplicate(s))"
    assert "proposed by fake-model on" in (tax_dir / "mathematics.yaml").read_text()


def test_expand_validates_with_the_configured_level_names(tmp_path: Path) -> None:
    # "subjects" is close to the default "subject": only [taxonomy] levels makes it valid,
    # and the edit that expand saves is validated with the same names.
    from tests.support.taxonomies import MATH

    tax_dir = write_taxonomy(
        tmp_path / "taxonomy", {"mathematics": MATH.replace("level: subject", "level: subjects")}
    )
    with FakeOpenAIServer(responder=json_reply(lambda b: proposals("Geometry"))) as srv:
        cfg = config_for(
            srv,
            tmp_path / "corpus.toml",
            '[taxonomy]\nlevels = ["discipline", "subjects", "topic"]\n',
        )
        code, out, err = run_cli("taxonomy", "expand", "mathematics", "--count", "1",
                                 "--config", str(cfg), "--taxonomy", str(tax_dir))  # fmt: skip
    assert code == 0, err
    assert out.strip() == "proposed geometry: Geometry"
    assert load_taxonomy(tax_dir, levels=["discipline", "subjects", "topic"])["geometry"].level == (
        "subjects"
    )
