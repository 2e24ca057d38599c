"""The topic walker (builder/walk/) and `corpus walk` (builder/cli/walk.py)."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import os
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder import walk_topics
from builder.errors import TaxonomyError, ValidationError
from builder.syllabus import Session, Syllabus
from builder.taxonomy import Node, Taxonomy, load_taxonomy
from builder.walk import Walk, coverage, description_phrases
from tests.support.taxonomies import MATH, PHYSICS, run_cli, write_syllabus, write_taxonomy

ROOT = Path(__file__).resolve().parent.parent


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


def calculus_syllabus(status: str = "approved", n: int = 6) -> Syllabus:
    sessions = tuple(
        Session(f"Session {i}", (f"goal {i}",), tuple(f"c{i}-{k}" for k in range(4)))
        for i in range(n)
    )
    return Syllabus("calculus", "mathematics", status, sessions)


# -- in-memory taxonomies for property tests ----------------------------------------------------


def build_taxonomy(spec: list, root: Path = Path("/nonexistent-taxonomy")) -> Taxonomy:
    """A Taxonomy from nested (weight, children) tuples; ids are d0, d0-1, d0-1-0, ..."""
    nodes: list[Node] = []
    file = root / "t.yaml"

    def add(node_id: str, weight: float, kids: list, parent: str | None, depth: int) -> None:
        child_ids = tuple(f"{node_id}-{i}" for i in range(len(kids)))
        level = ("discipline", "subject", "topic", "subtopic")[min(depth, 3)]
        nodes.append(
            Node(
                node_id,
                f"Name {node_id}",
                None,
                level,
                weight,
                (),
                "approved",
                parent,
                child_ids,
                depth,
                file,
                len(nodes) + 1,
            )
        )
        for cid, (w, grandkids) in zip(child_ids, kids, strict=True):
            add(cid, w, grandkids, node_id, depth + 1)

    for i, (w, kids) in enumerate(spec):
        add(f"d{i}", w, kids, None, 0)
    return Taxonomy(root, nodes)


weights = st.sampled_from([0.5, 1.0, 1.0, 2.0, 3.0])
leaf = st.tuples(weights, st.just([]))
subject = st.tuples(weights, st.lists(leaf, min_size=1, max_size=5))
discipline = st.tuples(weights, st.lists(st.one_of(subject, leaf), min_size=1, max_size=4))
taxonomies = st.lists(discipline, min_size=1, max_size=3).map(build_taxonomy)


def path_weight(tax: Taxonomy, node_id: str) -> float:
    return math.prod(n.weight for n in tax.path(node_id))


# -- units -----------------------------------------------------------------------------------


def test_units_carry_the_contract_fields(tax: Taxonomy) -> None:
    units = list(walk_topics(tax, seed=3, rounds=1))
    assert units, "one round yields every leaf once"
    for u in units:
        d = u.to_dict()
        for key in ("unit_id", "discipline", "subject", "topic", "taxonomy_path", "concepts"):
            assert d[key], key
        assert re.fullmatch(r"[0-9a-f]{16}", u.unit_id), u.unit_id
        assert u.taxonomy_path == tax.path_ids(u.topic)
        assert u.taxonomy_path.startswith(f"{u.discipline}/{u.subject}")
        assert u.concepts[0] == tax[u.topic].name
        assert 1 <= len(u.concepts) <= 5
        assert u.difficulty in ("basic", "intermediate", "advanced")
        assert u.seed == 3
    # Proposed nodes (integrals) and everything under a proposed node (topology) are skipped.
    assert sorted(u.topic for u in units) == sorted(
        ["linear-equations", "polynomials", "limits", "derivatives", "kinematics", "dynamics"]
        + ["oscillations"]
    )


def test_leaf_concepts_come_from_the_description(tax: Taxonomy) -> None:
    seen = set()
    for u in walk_topics(tax, seed=1, limit=60, subtree="linear-equations"):
        seen.update(u.concepts[1:])
        assert u.topic == "linear-equations"
    assert seen == {"Solving linear equations", "systems", "matrices"}


@pytest.mark.parametrize(
    ("text", "phrases"),
    [
        ("Membrane structure, diffusion and active transport.",
         ["Membrane structure", "diffusion", "active transport"]),
        ("Fractions; converting to and from decimals.",
         ["Fractions", "converting to and from decimals"]),
        ("The basic units of life", ["basic units of life"]),
        (None, []),
    ],
)  # fmt: skip
def test_description_phrases(text: str | None, phrases: list[str]) -> None:
    assert description_phrases(text) == phrases


def test_same_seed_same_units_different_seed_different_order(tax: Taxonomy) -> None:
    a = [u.to_dict() for u in walk_topics(tax, seed=5, limit=40)]
    b = [u.to_dict() for u in walk_topics(tax, seed=5, limit=40)]
    c = [u.to_dict() for u in walk_topics(tax, seed=6, limit=40)]
    assert a == b
    assert [u["unit_id"] for u in a] != [u["unit_id"] for u in c]
    assert len({u["unit_id"] for u in a}) == len(a), "unit ids are unique within a walk"


def test_same_units_in_other_processes(tax_dir: Path, tax: Taxonomy) -> None:
    """No dependence on Python's per-process hash randomisation."""
    expected = [
        json.dumps(u.to_dict(), ensure_ascii=False) for u in walk_topics(tax, seed=9, limit=15)
    ]
    outputs = []
    for hashseed in ("1", "2"):
        proc = subprocess.run(
            [sys.executable, "-m", "builder", "walk", "--taxonomy", str(tax_dir)]
            + ["--seed", "9", "--limit", "15"],
            cwd=Path.cwd(),  # no corpus.toml here
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONHASHSEED": hashseed, "PYTHONPATH": str(ROOT)},
        )
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout.splitlines())
    assert outputs[0] == outputs[1] == expected


def test_adding_a_node_keeps_the_other_units(tmp_path: Path) -> None:
    before = load_taxonomy(write_taxonomy(tmp_path / "a"))
    grown = MATH.replace(
        "      - {id: polynomials, name: Polynomials, level: topic}",
        "      - {id: polynomials, name: Polynomials, level: topic}\n"
        "      - {id: matrices, name: Matrices, level: topic}",
    )
    after = load_taxonomy(
        write_taxonomy(tmp_path / "b", {"mathematics": grown, "physics": PHYSICS})
    )
    old = {u.unit_id for u in walk_topics(before, seed=2, rounds=1)}
    new = {u.topic: u.unit_id for u in walk_topics(after, seed=2, rounds=1)}
    assert old == {uid for topic, uid in new.items() if topic != "matrices"}


# -- stratification, weighting, determinism (properties) ---------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(taxonomies, st.integers(0, 2**32), st.integers(1, 6))
def test_every_slot_once_before_any_repeats(tax: Taxonomy, seed: int, rounds: int) -> None:
    leaves = [n.id for n in tax.leaves()]
    units = list(walk_topics(tax, seed=seed, rounds=rounds, syllabi=False))
    first = [u.topic for u in units[: len(leaves)]]
    assert sorted(first) == sorted(leaves), "round 0 covers every leaf exactly once"
    counts: Counter[str] = Counter()
    for u in units:
        counts[u.topic] += 1
        if counts[u.topic] > 1:
            assert set(counts) == set(leaves), "a repeat only after everything is covered"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(taxonomies, st.integers(0, 2**32), st.integers(1, 12))
def test_counts_follow_weights(tax: Taxonomy, seed: int, rounds: int) -> None:
    leaves = [n.id for n in tax.leaves()]
    w = {i: path_weight(tax, i) for i in leaves}
    w_max = max(w.values())
    counts = Counter(u.topic for u in walk_topics(tax, seed=seed, rounds=rounds, syllabi=False))
    for i in leaves:
        expected_extra = (rounds - 1) * w[i] / w_max
        assert counts[i] >= 1
        assert abs((counts[i] - 1) - expected_extra) < 1, (i, counts[i], expected_extra)
    heaviest = [i for i in leaves if w[i] == w_max]
    assert all(counts[i] == rounds for i in heaviest)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    taxonomies, st.integers(0, 2**32), st.integers(0, 40), st.sampled_from(["random", "curriculum"])
)
def test_deterministic_and_prefix_stable(tax: Taxonomy, seed: int, k: int, order: str) -> None:
    endless = walk_topics(tax, seed=seed, order=order, syllabi=False, endless=True)
    prefix = [u.unit_id for u in itertools.islice(endless, k)]
    limited = [u.unit_id for u in walk_topics(tax, seed=seed, limit=k, order=order, syllabi=False)]
    assert prefix == limited
    assert len(limited) == k, "an unbounded walk never runs dry"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(taxonomies, st.integers(0, 2**32), st.data())
def test_sessions_are_stratified_like_leaves(tax: Taxonomy, seed: int, data: st.DataObject) -> None:
    syllabi = {}
    for node in tax:
        n = data.draw(st.integers(0, 4)) if node.depth == 1 else 0
        if n:
            sessions = tuple(Session(f"S{i}", (), (f"a{i}", f"b{i}", f"c{i}")) for i in range(n))
            syllabi[node.id] = Syllabus(
                node.id, tax.discipline_of(node.id).id, "approved", sessions
            )
    slots = set()
    for leaf in tax.leaves():
        owner = leaf if leaf.depth == 1 else tax.parent(leaf.id) if leaf.depth == 2 else None
        if owner is not None and owner.id in syllabi:
            slots.update((owner.id, i) for i in range(len(syllabi[owner.id].sessions)))
        else:
            slots.add((leaf.id, None))
    walk = walk_topics(tax, seed=seed, rounds=3, syllabi=syllabi)
    assert walk.slots == len(slots)
    units = list(walk)
    assert {(u.topic, u.session_index) for u in units[: len(slots)]} == slots
    assert len(units[: len(slots)]) == len(slots)
    for u in units:
        if u.session_index is not None:
            syl = syllabi[u.topic]
            assert all(c in {x for s in syl.sessions for x in s.concepts} for c in u.concepts)


def test_heavier_slots_come_earlier_on_average() -> None:
    tax = build_taxonomy([(1.0, [(1.0, [(10.0, []), (1.0, [])])])])
    heavy_first = sum(
        next(iter(walk_topics(tax, seed=s, syllabi=False))).topic == "d0-0-0" for s in range(300)
    )
    # Efraimidis-Spirakis: P(heavy first) = 10/11.
    assert 240 <= heavy_first <= 295


# -- bounds and filters ------------------------------------------------------------------------


def test_limit_and_token_budget(tax: Taxonomy) -> None:
    assert len(list(walk_topics(tax, limit=17))) == 17
    assert len(list(walk_topics(tax, token_budget=1050, tokens_per_unit=100))) == 10
    costs = itertools.cycle([100.0, 300.0])
    units = list(walk_topics(tax, token_budget=1000, tokens_per_unit=lambda u: next(costs)))
    assert len(units) == 5  # 100 + 300 + 100 + 300 + 100 <= 1000; the next 300 would pass it
    assert list(walk_topics(tax, limit=0)) == []
    assert list(walk_topics(tax, rounds=0)) == []


def test_filters_subtree_level_status(tax: Taxonomy) -> None:
    units = list(walk_topics(tax, rounds=1, subtree=["calculus", "waves"]))
    assert sorted(u.topic for u in units) == ["derivatives", "limits", "oscillations"]
    proposed = list(walk_topics(tax, rounds=1, statuses=("approved", "proposed")))
    assert {"integrals", "open-sets"} <= {u.topic for u in proposed}
    subjects = list(walk_topics(tax, rounds=1, level="subject"))
    assert sorted(u.topic for u in subjects) == ["algebra", "calculus", "mechanics", "waves"]
    calc = next(u for u in subjects if u.topic == "calculus")
    assert calc.subject == "calculus" and calc.concepts[0] == "Calculus"
    # Its approved children's names (not the proposed "Integrals") and description phrases.
    phrases = description_phrases(tax["calculus"].description)
    assert phrases == ["Limits", "derivatives", "integrals of functions of one variable"]
    assert set(calc.concepts[1:]) <= {"Limits and continuity", "Derivatives", *phrases}
    assert "Integrals" not in calc.concepts
    with pytest.raises(TaxonomyError, match="no selected node has level 'chapter'"):
        walk_topics(tax, level="chapter")
    with pytest.raises(TaxonomyError, match="did you mean"):
        walk_topics(tax, subtree=["calculas"])
    with pytest.raises(TaxonomyError, match="selects nothing under topology"):
        walk_topics(tax, subtree=["topology"])


def test_subject_of_imported_taxonomy_is_the_parent_of_a_leaf(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        id: science
        name: Science
        children:
          - id: chem
            name: Chemistry
            children:
              - id: organic
                name: Organic chemistry
                children:
                  - {id: alkanes, name: Alkanes}
              - {id: bonding, name: Bonding}
        """
    )
    tax = load_taxonomy(write_taxonomy(tmp_path / "t", {"science": text}))
    by_topic = {u.topic: u for u in walk_topics(tax, rounds=1)}
    assert by_topic["alkanes"].subject == "organic"
    assert by_topic["bonding"].subject == "chem"
    assert by_topic["alkanes"].discipline == "science"


# -- syllabi (GLAN sampling) -------------------------------------------------------------------


def test_sessions_replace_the_leaves_of_a_subject_with_a_syllabus(tax: Taxonomy) -> None:
    syl = calculus_syllabus(n=6)
    units = list(walk_topics(tax, seed=4, rounds=3, syllabi={"calculus": syl}))
    calc = [u for u in units if u.subject == "calculus"]
    assert calc and all(u.topic == "calculus" for u in calc)
    assert not any(u.topic in ("limits", "derivatives") for u in units)
    round0 = units[: walk_topics(tax, syllabi={"calculus": syl}).slots]
    assert sorted(u.session_index for u in round0 if u.subject == "calculus") == list(range(6))
    sizes = Counter()
    for u in calc:
        titles = u.session.split("; ")
        indices = [int(t.split()[-1]) for t in titles]
        assert 1 <= len(indices) <= 2
        assert u.session_index in indices
        assert indices == list(range(indices[0], indices[0] + len(indices))), "adjacent"
        allowed = {c for i in indices for c in syl.sessions[i].concepts}
        assert 1 <= len(u.concepts) <= 5 and set(u.concepts) <= allowed
        assert set(u.concepts) & set(syl.sessions[u.session_index].concepts)
        assert u.topic_name == u.session
        expected = ("basic", "basic", "intermediate", "intermediate", "advanced", "advanced")
        assert u.difficulty == expected[max(indices)]
        sizes[len(indices)] += 1
    assert sizes[1] and sizes[2], "both one- and two-session units occur"


def test_only_approved_syllabi_by_default(tax_dir: Path) -> None:
    write_syllabus(tax_dir, "proposed")
    tax = load_taxonomy(tax_dir)
    walk = walk_topics(tax, rounds=1)
    assert walk.ignored_syllabi == ["calculus"]
    assert "limits" in {u.topic for u in walk}
    with_proposed = walk_topics(tax, rounds=1, syllabus_statuses=("approved", "proposed"))
    assert {u.session_index for u in with_proposed if u.subject == "calculus"} == set(range(6))
    write_syllabus(tax_dir, "approved")
    assert walk_topics(load_taxonomy(tax_dir), rounds=1).syllabi.keys() == {"calculus"}


def test_an_invalid_syllabus_stops_the_walk_with_file_and_line(tax_dir: Path) -> None:
    path = write_syllabus(tax_dir, "approved")
    path.write_text(path.read_text().replace("status: approved", "status: final"))
    with pytest.raises(ValidationError, match=r"calculus.yaml:3: status must be"):
        walk_topics(load_taxonomy(tax_dir))
    assert list(walk_topics(load_taxonomy(tax_dir), rounds=1, syllabi=False))


# -- curriculum order --------------------------------------------------------------------------


def assert_prerequisites_first(tax: Taxonomy, units: list) -> None:
    for i, u in enumerate(units):
        for node in tax.path(u.topic):
            for pre in node.prerequisites:
                for j, v in enumerate(units):  # every unit under the prerequisite comes first
                    if pre in v.taxonomy_path.split("/"):
                        assert j < i, (pre, v.topic, u.topic)


def test_curriculum_order_puts_prerequisites_first(tax: Taxonomy) -> None:
    syl = calculus_syllabus(n=3)
    units = list(walk_topics(tax, seed=8, rounds=1, order="curriculum", syllabi={"calculus": syl}))
    assert_prerequisites_first(tax, units)
    sessions = [u.session_index for u in units if u.subject == "calculus"]
    assert sessions == [0, 1, 2]
    # With equal weights every round covers every slot, each round in curriculum order.
    flat = load_taxonomy(
        write_taxonomy(
            tax.root.parent / "flat",
            {"mathematics": MATH.replace("    weight: 2\n", ""), "physics": PHYSICS},
        )
    )
    walk = walk_topics(flat, seed=8, rounds=3, order="curriculum")
    units = list(walk)
    assert len(units) == 3 * walk.slots
    for r in range(3):
        assert_prerequisites_first(flat, units[r * walk.slots : (r + 1) * walk.slots])


# -- laziness ----------------------------------------------------------------------------------


def big_taxonomy(disciplines: int = 10, subjects: int = 100, topics: int = 99) -> Taxonomy:
    nodes: list[Node] = []
    f = Path("/nonexistent-taxonomy/big.yaml")
    for d in range(disciplines):
        did = f"d{d}"
        sids = [f"{did}-s{s}" for s in range(subjects)]
        nodes.append(
            Node(did, f"D{d}", None, "discipline", 1.0, (), "approved", None, tuple(sids), 0, f, 1)
        )
        for s, sid in enumerate(sids):
            tids = tuple(f"{sid}-t{t}" for t in range(topics))
            nodes.append(
                Node(sid, f"S{s}", None, "subject", 1.0 + s % 3, (), "approved", did, tids, 1, f, 1)
            )
            nodes.extend(
                Node(
                    t,
                    f"T {t}",
                    "alpha, beta and gamma",
                    "topic",
                    1.0,
                    (),
                    "approved",
                    sid,
                    (),
                    2,
                    f,
                    1,
                )
                for t in tids
            )
    return Taxonomy(Path("/nonexistent-taxonomy"), nodes)


def test_walk_is_lazy_on_a_100k_node_taxonomy(monkeypatch: pytest.MonkeyPatch) -> None:
    tax = big_taxonomy()
    assert len(tax) >= 100_000
    made = 0
    original = Walk._make_unit

    def counting(self, slot, occurrence):  # noqa: ANN001
        nonlocal made
        made += 1
        return original(self, slot, occurrence)

    monkeypatch.setattr(Walk, "_make_unit", counting)
    walk = walk_topics(tax, seed=1, endless=True)
    assert made == 0, "setting up makes no unit"
    units = iter(walk)
    first = next(units)
    assert made == 1, "only the unit asked for is made"
    assert first.discipline.startswith("d")
    assert [u.topic for u in itertools.islice(units, 4)] and made == 5
    n = sum(1 for _ in walk_topics(tax, seed=1))  # the default bound: one round
    assert n == walk.slots == 99_000
    assert made == 5 + 99_000


def test_a_walk_iterated_again_starts_again(tax: Taxonomy) -> None:
    walk = walk_topics(tax, seed=5, rounds=2)
    first = [u.unit_id for u in walk]
    assert len(first) > walk.slots
    assert walk.coverage().total == len(first)
    second = [u.unit_id for u in walk]
    assert second == first, "a second loop over the same Walk yields the same units"
    assert walk.coverage().total == len(first), "coverage counts the latest pass only"
    with pytest.raises(TypeError):
        next(walk)  # type: ignore[call-overload]  # a Walk is iterable, not an iterator


def test_one_default_bound_in_python_and_the_cli(tax: Taxonomy, tax_dir: Path) -> None:
    units = list(walk_topics(tax, seed=7))
    walk = walk_topics(tax, seed=7)
    assert len(units) == walk.slots == 7, "no bound given: one round, as `corpus walk`"
    code, out, err = run_cli("walk", "--taxonomy", str(tax_dir), "--seed", "7")
    assert code == 0, err
    assert [json.loads(line)["unit_id"] for line in out.splitlines()] == [u.unit_id for u in units]
    endless = walk_topics(tax, seed=7, endless=True)
    assert len(list(itertools.islice(endless, 50))) == 50


def test_walk_topics_accepts_a_path(tax_dir: Path, tax: Taxonomy) -> None:
    expected = [u.unit_id for u in walk_topics(tax, seed=2)]
    assert [u.unit_id for u in walk_topics(str(tax_dir), seed=2)] == expected
    assert [u.unit_id for u in walk_topics(tax_dir, seed=2)] == expected
    with pytest.raises(TaxonomyError, match="does not exist"):
        walk_topics(str(tax_dir / "nowhere"))


def test_an_empty_discipline_is_not_walked(tax_dir: Path) -> None:
    (tax_dir / "astronomy.yaml").write_text("id: astronomy\nname: Astronomy\nlevel: discipline\n")
    tax = load_taxonomy(tax_dir)
    topics = [u.topic for u in walk_topics(tax, seed=1)]
    assert "astronomy" not in topics and len(topics) == 7
    with pytest.raises(TaxonomyError, match="selects nothing under astronomy"):
        walk_topics(tax, subtree="astronomy")


# -- coverage and CLI --------------------------------------------------------------------------


def test_coverage_counts_units_per_node(tax: Taxonomy) -> None:
    walk = walk_topics(tax, seed=1, rounds=3)
    units = list(walk)
    cov = walk.coverage()
    assert cov.total == len(units)
    assert cov.units["limits"] == sum(u.topic == "limits" for u in units)
    assert cov.subtree["mathematics"] == sum(u.discipline == "mathematics" for u in units)
    assert cov.uncovered == []
    assert coverage(units).units == cov.units
    partial = walk_topics(tax, seed=1, limit=2)
    list(partial)
    assert len(partial.coverage().uncovered) == partial.slots - 2
    table = cov.table(tax)
    assert "  calculus" in table and "total units: " in table


def test_cli_prints_json_lines(tax_dir: Path) -> None:
    code, out, err = run_cli(
        "walk", "--taxonomy", str(tax_dir), "--seed", "2", "--limit", "5", "--subtree", "calculus"
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 5
    for r in rows:
        assert {"unit_id", "discipline", "subject", "topic", "taxonomy_path", "concepts"} <= set(r)
        assert r["subject"] == "calculus"


def test_cli_defaults_to_one_round_and_curriculum_order(tax_dir: Path) -> None:
    code, out, _ = run_cli("walk", "--taxonomy", str(tax_dir), "--order", "curriculum")
    assert code == 0
    topics = [json.loads(line)["topic"] for line in out.splitlines()]
    assert len(topics) == 7 and len(set(topics)) == 7
    assert topics.index("limits") > topics.index("polynomials")
    assert topics.index("kinematics") > topics.index("derivatives")
    assert topics.index("dynamics") > topics.index("kinematics")


def test_cli_coverage_table_and_json(tax_dir: Path) -> None:
    code, out, _ = run_cli("walk", "--taxonomy", str(tax_dir), "--rounds", "2", "--coverage")
    assert code == 0
    assert out.splitlines()[0].split() == ["node", "level", "units", "subtree"]
    assert any(line.split()[:1] == ["limits"] for line in out.splitlines())
    code, out, _ = run_cli(
        "walk", "--taxonomy", str(tax_dir), "--limit", "3", "--coverage", "--json"
    )
    data = json.loads(out)
    assert data["total"] == 3 and len(data["uncovered"]) == 4
    assert {r["id"] for r in data["rows"]} >= {"mathematics", "limits"}


def test_cli_user_errors_are_one_line(tax_dir: Path) -> None:
    code, out, err = run_cli("walk", "--taxonomy", str(tax_dir), "--subtree", "calculas")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "did you mean" in err


def test_cli_notes_ignored_proposed_syllabi(tax_dir: Path, tmp_path: Path) -> None:
    """Approved-only configs ([syllabus] generate_missing = false) leave proposed syllabi
    out and say so; by default `corpus walk` walks them, as `corpus build` does."""
    write_syllabus(tax_dir, "proposed")
    cfg = tmp_path / "approved-only.toml"
    cfg.write_text("[syllabus]\ngenerate_missing = false\n")
    code, out, err = run_cli("walk", "--config", str(cfg), "--taxonomy", str(tax_dir))
    assert code == 0 and "proposed syllabi not used: calculus" in err
    assert all(json.loads(line)["session_index"] is None for line in out.splitlines())
    args = ("walk", "--config", str(cfg), "--taxonomy", str(tax_dir), "--include-proposed")
    code, out, _ = run_cli(*args)
    assert any(json.loads(line)["session_index"] is not None for line in out.splitlines())
    code, out, err = run_cli("walk", "--taxonomy", str(tax_dir))
    assert code == 0 and "not used" not in err
    assert any(json.loads(line)["session_index"] is not None for line in out.splitlines())


def test_walk_from_config(tax_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "corpus.toml"
    cfg.write_text(
        f'[taxonomy]\ndir = "{tax_dir}"\n[walk]\nseed = 4\nlimit = 6\norder = "curriculum"\n'
    )
    code, out, err = run_cli("walk", "--config", str(cfg))
    assert code == 0, err
    expected = [
        u.unit_id for u in walk_topics(load_taxonomy(tax_dir), seed=4, limit=6, order="curriculum")
    ]
    assert [json.loads(line)["unit_id"] for line in out.splitlines()] == expected


# -- the CLI ---------------------------------------------------------------------------------


def _corpus(*args: str, cwd: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen(
        [sys.executable, "-m", "builder", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def test_walk_into_a_closed_pipe_exits_0(tmp_path: Path) -> None:
    """`corpus walk | head -1`: the reader leaving early is not an error."""
    taxonomy = Path(__file__).resolve().parents[1] / "taxonomy"
    proc = _corpus("walk", "--limit", "2000", "--taxonomy", str(taxonomy), cwd=tmp_path)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, stderr
    assert json.loads(first)["unit_id"]
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_walk_limit_zero_is_refused() -> None:
    from click.testing import CliRunner

    from builder.cli import cli

    result = CliRunner().invoke(cli, ["walk", "--limit", "0"], prog_name="corpus")
    assert result.exit_code == 2
    assert "--limit" in result.output
    result = CliRunner().invoke(cli, ["walk", "--token-budget", "0"], prog_name="corpus")
    assert result.exit_code == 2


def test_config_key_typo_gets_a_did_you_mean_and_the_sections_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "corpus.toml"
    cfg.write_text("[walk]\nseed = 1\nlimt = 3\n")
    code, out, err = run_cli("walk", "--config", str(cfg))
    assert code == 2 and out == ""
    assert err.strip().startswith(f"{cfg}:3: unknown key 'walk.limt' (did you mean 'limit'? ")
    assert "valid keys of [walk]: seed, limit, token_budget" in err
    assert "corpus --help" not in err


def test_include_proposed_has_one_place(tmp_path: Path, tax_dir: Path) -> None:
    cfg = tmp_path / "corpus.toml"
    cfg.write_text(f'[taxonomy]\ndir = "{tax_dir}"\ninclude_proposed = true\n')
    code, out, err = run_cli("walk", "--config", str(cfg))
    assert code == 2 and out == ""
    assert err.strip() == (
        f"{cfg}:3: 'taxonomy.include_proposed' moved: it is [walk] include_proposed now "
        "(one place for it) (write `include_proposed = ...` under [walk] instead)"
    )
    cfg.write_text(f'[taxonomy]\ndir = "{tax_dir}"\n[walk]\ninclude_proposed = true\n')
    code, out, err = run_cli("walk", "--config", str(cfg))
    assert code == 0, err
    assert {"integrals", "open-sets"} <= {json.loads(line)["topic"] for line in out.splitlines()}


def test_configured_level_names_hold_in_every_command(tmp_path: Path) -> None:
    # "subjects" is close to the default "subject": a typo unless [taxonomy] levels names it.
    # Validate, walk and plan read the same setting, so none refuses what another accepts.
    from tests.support.project import make_project

    levels = ["discipline", "subjects", "topic"]
    config = make_project(tmp_path / "p", "http://127.0.0.1:9/v1", {"taxonomy": {"levels": levels}})
    for f in (tmp_path / "p" / "taxonomy").glob("*.yaml"):
        f.write_text(f.read_text().replace("level: subject\n", "level: subjects\n"))
    for argv in (["taxonomy", "validate"], ["walk", "--limit", "1"], ["plan"]):
        code, out, err = run_cli(*argv, "--config", str(config))
        assert code == 0, (argv, err)
        assert out and "unknown level" not in err
    unset = tmp_path / "p" / "unset.toml"
    unset.write_text(config.read_text().replace('levels = ["discipline", "subjects", "topic"]', ""))
    code, out, err = run_cli("walk", "--limit", "1", "--config", str(unset))
    assert code == 2 and "unknown level 'subjects'" in err


def test_the_readme_walker_snippet_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## The walker (for programmers)", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "walk_topics" in snippet
    monkeypatch.chdir(ROOT)  # the snippet loads ./taxonomy
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(snippet, "README.md", "exec"), {})  # noqa: S102 - our own README
    lines = out.getvalue().splitlines()
    assert len(lines) == 100 and all(" mathematics/" in line for line in lines)
