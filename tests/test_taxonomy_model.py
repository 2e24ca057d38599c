"""Loading a taxonomy and navigating it (builder.taxonomy.model / load_taxonomy)."""

from __future__ import annotations

import shutil
from pathlib import Path

import networkx as nx
import pytest

from builder.errors import TaxonomyError, ValidationError
from builder.taxonomy import Node, Taxonomy, UnknownNodeError, load_taxonomy, validate_taxonomy

DATA = Path(__file__).parent / "data" / "taxonomy_small"


@pytest.fixture
def tax() -> Taxonomy:
    return load_taxonomy(DATA)


def ids(nodes: list[Node]) -> list[str]:
    return [n.id for n in nodes]


def test_load_fields_and_file_order(tax: Taxonomy) -> None:
    assert ids(list(tax)) == [
        "mathematics",
        "algebra",
        "equations",
        "polynomials",
        "calculus",
        "limits",
        "derivatives",
        "integrals",
        "physics",
        "mechanics",
        "kinematics",
        "dynamics",
    ]
    assert len(tax) == 12
    calc = tax["calculus"]
    assert calc.name == "Calculus"
    assert calc.description == "Limits, derivatives and integrals."
    assert calc.level == "subject"
    assert calc.prerequisites == ("algebra",)
    assert calc.parent == "mathematics"
    assert calc.children == ("limits", "derivatives", "integrals")
    assert calc.depth == 1
    assert calc.file == DATA / "mathematics.yaml"
    assert calc.line == 15  # the line of its first key
    assert tax["polynomials"].weight == 2.0
    assert tax["equations"].weight == 1.0
    assert tax["integrals"].status == "proposed"
    assert tax["limits"].status == "approved"
    assert tax["mathematics"].line == 2
    assert tax["kinematics"].file == DATA / "physics.yaml"


def test_lookups(tax: Taxonomy) -> None:
    assert "limits" in tax and tax["limits"] in tax and "nope" not in tax
    assert ids(tax.roots()) == ["mathematics", "physics"]
    assert ids(tax.children("calculus")) == ["limits", "derivatives", "integrals"]
    assert tax.parent("limits").id == "calculus"
    assert tax.parent("mathematics") is None
    assert ids(tax.ancestors("dynamics")) == ["physics", "mechanics"]
    assert ids(tax.path("dynamics")) == ["physics", "mechanics", "dynamics"]
    assert tax.path_ids("dynamics") == "physics/mechanics/dynamics"
    assert ids(tax.subtree("algebra")) == ["algebra", "equations", "polynomials"]
    assert ids(tax.leaves("calculus")) == ["limits", "derivatives", "integrals"]
    assert len(tax.leaves()) == 7
    assert tax.discipline_of("derivatives").id == "mathematics"
    assert tax.file_of("dynamics") == DATA / "physics.yaml"
    assert ids(tax.dependents("derivatives")) == ["integrals", "dynamics"]
    assert tax.is_ancestor("mathematics", "limits")
    assert not tax.is_ancestor("limits", "mathematics")
    assert not tax.is_ancestor("algebra", "limits")
    # Methods accept nodes as well as ids.
    assert tax.path_ids(tax["limits"]) == "mathematics/calculus/limits"


def test_unknown_id_is_a_helpful_key_error(tax: Taxonomy) -> None:
    with pytest.raises(UnknownNodeError) as info:
        tax["limit"]
    assert isinstance(info.value, KeyError) and isinstance(info.value, TaxonomyError)
    assert "limits" in str(info.value)  # the suggestion
    assert tax.get("limit") is None


def test_graph_has_tree_and_prerequisite_edges(tax: Taxonomy) -> None:
    g = tax.graph
    assert isinstance(g, nx.DiGraph)
    assert g.number_of_nodes() == 12
    assert g.edges["calculus", "limits"]["kind"] == "child"
    assert g.edges["algebra", "calculus"]["kind"] == "prerequisite"
    assert g.edges["derivatives", "dynamics"]["kind"] == "prerequisite"
    assert g.nodes["integrals"]["status"] == "proposed"
    assert nx.is_directed_acyclic_graph(g)
    kinds = [k for _, _, k in g.edges(data="kind")]
    assert kinds.count("child") == 10 and kinds.count("prerequisite") == 6


def test_curriculum_order_respects_every_edge(tax: Taxonomy) -> None:
    order = ids(tax.curriculum_order())
    assert sorted(order) == sorted(tax.ids())
    pos = {n: i for i, n in enumerate(order)}
    for a, b in tax.graph.edges:
        assert pos[a] < pos[b], (a, b)
    # A prerequisite's whole subtree comes first: all of calculus before mechanics.
    assert max(pos[n.id] for n in tax.subtree("calculus")) < pos["mechanics"]
    assert order == ids(tax.curriculum_order())  # deterministic
    assert ids(tax.curriculum_order(["dynamics", "limits", "algebra"])) == [
        "algebra",
        "limits",
        "dynamics",
    ]


def test_curriculum_order_pulls_forward_references_first(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "id: a\nname: A\nchildren:\n"
        "  - {id: x, name: X, prerequisites: [y]}\n"
        "  - id: y\n    name: Y\n    children:\n      - {id: y1, name: Y1}\n"
    )
    order = ids(load_taxonomy(tmp_path).curriculum_order())
    assert order == ["a", "y", "y1", "x"]


def test_curriculum_order_falls_back_when_subtrees_cannot_be_completed(tmp_path: Path) -> None:
    # b requires all of a, but a's child needs b's child: no subtree-complete order exists
    # (validation refuses such a file, see test_taxonomy_validate), yet a Taxonomy built
    # directly still gets a topological order of the plain graph.
    def node(i: str, parent: str | None, kids: tuple[str, ...], pre: tuple[str, ...] = ()):
        depth = 0 if parent is None else (1 if parent == "d" else 2)
        return Node(
            i, i.upper(), None, None, 1.0, pre, "approved", parent, kids, depth, tmp_path, 1
        )

    tax = Taxonomy(
        tmp_path,
        [
            node("d", None, ("a", "b")),
            node("a", "d", ("a1",)),
            node("a1", "a", (), ("b1",)),
            node("b", "d", ("b1",), ("a",)),
            node("b1", "b", ()),
        ],
    )
    order = ids(tax.curriculum_order())
    pos = {n: i for i, n in enumerate(order)}
    assert len(order) == 5
    for a, b in tax.graph.edges:
        assert pos[a] < pos[b]


def test_stats(tax: Taxonomy) -> None:
    s = tax.stats()
    assert s["nodes"] == 12
    assert s["leaves"] == 7
    assert s["depth"] == 3
    assert s["disciplines"] == 2
    assert s["per_level"] == {"discipline": 2, "subject": 3, "topic": 7}
    assert s["approved"] == 11 and s["proposed"] == 1
    assert s["per_depth"] == [2, 3, 7]
    assert s["per_discipline"] == {"mathematics": 8, "physics": 4}


def test_subdirectories_and_other_files_are_not_node_files(tmp_path: Path) -> None:
    root = tmp_path / "tax"
    shutil.copytree(DATA, root)
    (root / "mathematics" / "syllabi").mkdir(parents=True)
    (root / "mathematics" / "syllabi" / "calculus.yaml").write_text("sessions: []\n")
    (root / "README.md").write_text("# notes\n")
    assert len(load_taxonomy(root)) == 12


def test_single_file_and_yml_extension(tmp_path: Path) -> None:
    (tmp_path / "one.yml").write_text("id: one\nname: One\n")
    assert load_taxonomy(tmp_path).ids() == ["one"]
    assert load_taxonomy(tmp_path / "one.yml").ids() == ["one"]


def test_missing_and_empty_directories(tmp_path: Path) -> None:
    with pytest.raises(TaxonomyError, match="does not exist"):
        load_taxonomy(tmp_path / "nope")
    with pytest.raises(ValidationError, match="no taxonomy files"):
        load_taxonomy(tmp_path)
    assert validate_taxonomy(DATA) == []


def test_scalars_follow_yaml_1_2(tmp_path: Path) -> None:
    # "no" and "on" stay strings under YAML 1.2 (ruamel's default), unlike YAML 1.1.
    (tmp_path / "n.yaml").write_text(
        "id: 'no'\nname: on\nlevel: >-\n  folded\n  text\nweight: 1e1\n"
        'children:\n  - {id: x2, name: "A: b", description: !!str 12}\n'
    )
    tax = load_taxonomy(tmp_path)
    assert tax["no"].name == "on"
    assert tax["no"].level == "folded text"
    assert tax["no"].weight == 10.0
    assert tax["x2"].name == "A: b"
    assert tax["x2"].description == "12"


def big_taxonomy(root: Path, disciplines: int, subjects: int, topics: int) -> int:
    """Write a generated taxonomy; returns its node count."""
    root.mkdir()
    n = 0
    for d in range(disciplines):
        lines = [f"id: d{d}", f"name: Discipline {d}", "level: discipline", "children:"]
        n += 1
        for s in range(subjects):
            lines += [f"  - id: d{d}-s{s}", f"    name: Subject {s}", "    children:"]
            n += 1
            for t in range(topics):
                pre = f", prerequisites: [d{d}-s{s}-t{t - 1}]" if t % 7 == 3 else ""
                lines.append(f"      - {{id: d{d}-s{s}-t{t}, name: Topic {t}{pre}}}")
                n += 1
        (root / f"d{d}.yaml").write_text("\n".join(lines) + "\n")
    return n


def test_large_taxonomy_loads(tmp_path: Path) -> None:
    n = big_taxonomy(tmp_path / "big", 4, 10, 500)
    tax = load_taxonomy(tmp_path / "big")
    assert len(tax) == n == 4 + 40 + 20000
    assert tax.path_ids("d3-s9-t499") == "d3/d3-s9/d3-s9-t499"
    assert len(tax.curriculum_order()) == n
