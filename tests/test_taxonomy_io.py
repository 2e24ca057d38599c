"""Importing CSV/JSON outlines and exporting taxonomies (builder.taxonomy.io and the
`corpus taxonomy import|export` commands)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import random
from pathlib import Path

import networkx as nx
import pytest

from builder.cli import main
from builder.errors import BuilderError, InputError, TaxonomyError, ValidationError
from builder.taxonomy import (
    export_taxonomy,
    import_taxonomy,
    load_taxonomy,
    read_csv_outline,
    read_json_outline,
)

DATA = Path(__file__).parent / "data" / "taxonomy_small"
LEVELS = ["domain", "field", "subfield", "topic"]


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    return path


def four_level_rows(n: int, seed: int = 0) -> list[list[str]]:
    """n rows of a random 4-level outline with repeated prefixes and repeated leaf names."""
    rng = random.Random(seed)
    rows = [["Domain", "Field", "Subfield", "Topic", "description", "weight"]]
    for i in range(n):
        d = rng.randrange(3)
        f = rng.randrange(6)
        s = rng.randrange(8)
        t = i % 40  # the same topic names recur under many subfields
        rows.append(
            [
                f"Domain {d}",
                f"Field {d}.{f}",
                f"Subfield {d}.{f}.{s}",
                f"Topic {t}",
                # A repeated path repeats its description and weight (else it is refused).
                f"Topic {t} of subfield {d}.{f}.{s}" if t % 3 == 0 else "",
                "2" if t % 5 == 0 else "",
            ]
        )
    return rows


def distinct_paths_per_level(rows: list[list[str]]) -> dict[str, int]:
    out = {}
    for k, level in enumerate(LEVELS):
        out[level] = len({tuple(r[: k + 1]) for r in rows[1:]})
    return out


def test_csv_import_validates_and_counts_match(tmp_path: Path) -> None:
    rows = four_level_rows(300)
    src = write_csv(tmp_path / "outline.csv", rows)
    into = tmp_path / "tax"
    result = import_taxonomy(src, into, levels=LEVELS)
    assert sorted(p.name for p in into.iterdir()) == [
        "domain-0.yaml",
        "domain-1.yaml",
        "domain-2.yaml",
    ]
    tax = load_taxonomy(into)
    assert tax.stats()["per_level"] == distinct_paths_per_level(rows)
    assert result.per_level == distinct_paths_per_level(rows)
    assert tax.stats()["depth"] == 4
    # Levels are the column names; description and weight go to the row's last node.
    first = rows[1]
    leaf = next(
        n
        for n in tax.leaves()
        if n.name == first[3] and tax[n.parent].name == first[2] and tax.path(n)[1].name == first[1]
    )
    assert leaf.level == "topic" and leaf.description == first[4] and first[4]
    assert leaf.weight == 2.0
    assert tax.path(leaf)[0].level == "domain"


def test_csv_import_ids_are_stable_and_collisions_deterministic(tmp_path: Path) -> None:
    rows = [
        ["discipline", "subject", "topic"],
        ["Mathematics", "Algebra", "Introduction"],
        ["Mathematics", "Calculus", "Introduction"],
        ["Mathematics", "Calculus", "Calculus"],
        ["Mathematics", "Calculus", "Calculus!"],
        ["Physics", "Mechanics", "Introduction"],
        ["Physique", "Mécanique", "数学"],
    ]
    src = write_csv(tmp_path / "o.csv", rows)
    import_taxonomy(src, tmp_path / "a")
    import_taxonomy(src, tmp_path / "b")
    files_a = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    files_b = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}
    assert files_a == files_b  # same input, same ids and bytes
    tax = load_taxonomy(tmp_path / "a")
    assert tax.path_ids(tax.children("algebra")[0]) == "mathematics/algebra/introduction"
    assert [n.id for n in tax.children("calculus")] == [
        "calculus-introduction",
        "calculus-calculus",
        "calculus-calculus-2",
    ]
    assert [n.id for n in tax.children("mechanics")] == ["mechanics-introduction"]
    assert tax["mecanique"].name == "Mécanique"
    weird = tax.children("mecanique")[0]
    assert weird.name == "数学" and weird.id.startswith("n-")
    # Appending rows never renames nodes that already had ids.
    write_csv(tmp_path / "o2.csv", [*rows, ["Mathematics", "Geometry", "Introduction"]])
    import_taxonomy(tmp_path / "o2.csv", tmp_path / "c")
    tax2 = load_taxonomy(tmp_path / "c")
    assert set(tax.ids()) <= set(tax2.ids())
    assert "geometry-introduction" in tax2


def test_large_csv_imports(tmp_path: Path) -> None:
    rows = four_level_rows(5000, seed=1)
    src = write_csv(tmp_path / "big.csv", rows)
    result = import_taxonomy(src, tmp_path / "tax", levels=LEVELS)
    assert result.per_level == distinct_paths_per_level(rows)
    assert len(load_taxonomy(tmp_path / "tax")) == result.nodes


@pytest.mark.parametrize(
    ("rows", "levels", "line", "needle"),
    [
        ([["domain", "field"], ["A", "B"]], LEVELS, 1, "'subfield', 'topic' not in the header"),
        ([["a", "b"], ["A", "B"], ["A", ""]], None, 3, "row 3: empty 'b' value"),
        ([["a", "b"], ["A", "B"], ["A", "B", "C"]], None, 3, "row 3 has 3 field(s)"),
        ([["a", "weight"], ["A", "heavy"]], None, 2, "weight 'heavy' is not a number > 0"),
        ([["a", "a"], ["A", "B"]], None, 1, "duplicate column"),
        ([["a", "b"]], None, 2, "no rows"),
    ],
)
def test_csv_errors_name_the_row(
    tmp_path: Path, rows: list[list[str]], levels: list[str] | None, line: int, needle: str
) -> None:
    src = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(InputError) as info:
        read_csv_outline(src, levels)
    p = info.value.problem
    assert (Path(p.file).name, p.line) == ("bad.csv", line)
    assert needle in p.message


def test_csv_reports_every_bad_row_at_once(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "bad.csv", [["a", "b"], ["A", ""], ["A", "B"], ["A"], ["", "B"]])
    with pytest.raises(ValidationError) as info:
        read_csv_outline(src)
    assert [p.line for p in info.value.problems] == [2, 4, 5]
    assert not (tmp_path / "tax").exists()


def test_tsv_and_blank_lines(tmp_path: Path) -> None:
    (tmp_path / "o.tsv").write_text("a\tb\nX, Y\tZ\n\nX, Y\tW\n")
    roots = read_csv_outline(tmp_path / "o.tsv")
    assert [r.name for r in roots] == ["X, Y"]
    assert [c.name for c in roots[0].children] == ["Z", "W"]


def test_json_import(tmp_path: Path) -> None:
    outline = [
        {
            "name": "Mathematics",
            "children": [
                {
                    "name": "Algebra",
                    "description": "Symbols.",
                    "children": [
                        {"name": "Groups", "weight": 2},
                        {"name": "Rings", "status": "proposed"},
                    ],
                },
                {"name": "Calculus", "id": "calc", "prerequisites": ["algebra"]},
            ],
        },
        {"name": "Physics"},
    ]
    (tmp_path / "o.json").write_text(json.dumps(outline))
    result = import_taxonomy(tmp_path / "o.json", tmp_path / "tax")
    assert [p.name for p in result.files] == ["mathematics.yaml", "physics.yaml"]
    tax = load_taxonomy(tmp_path / "tax")
    assert tax.path_ids("groups") == "mathematics/algebra/groups"
    assert tax["groups"].level == "topic" and tax["algebra"].level == "subject"
    assert tax["groups"].weight == 2.0 and tax["rings"].status == "proposed"
    assert tax["calc"].prerequisites == ("algebra",)
    assert tax["algebra"].description == "Symbols."
    # Custom level names.
    import_taxonomy(tmp_path / "o.json", tmp_path / "tax2", levels=["d", "f", "s"])
    assert load_taxonomy(tmp_path / "tax2")["groups"].level == "s"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"name": "A", "children": [{"title": "B"}]}, "$.children[0]: unknown key(s) 'title'"),
        ({"name": "A", "children": [{"name": ""}]}, "needs a non-empty 'name'"),
        ({"name": "A", "weight": -1}, "'weight' must be a number > 0"),
        ({"name": "A", "id": "Not A Slug"}, "is not a slug"),
    ],
)
def test_json_errors(tmp_path: Path, data: object, needle: str) -> None:
    (tmp_path / "o.json").write_text(json.dumps(data))
    with pytest.raises(BuilderError) as info:
        read_json_outline(tmp_path / "o.json")
    assert any(needle in p.message for p in info.value.problems), info.value.problems


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "o.json").write_text('{\n  "name": "A",\n  "children": [\n}\n')
    with pytest.raises(InputError) as info:
        read_json_outline(tmp_path / "o.json")
    assert info.value.problem.line == 4


def test_import_refuses_to_overwrite_or_produce_an_invalid_taxonomy(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "o.csv", [["d", "s"], ["Mathematics", "Algebra"]])
    into = tmp_path / "tax"
    import_taxonomy(src, into)
    before = (into / "mathematics.yaml").read_bytes()
    with pytest.raises(TaxonomyError, match="would overwrite") as info:
        import_taxonomy(src, into)
    assert "--force" in (info.value.problem.hint or "")
    import_taxonomy(src, into, force=True)
    assert (into / "mathematics.yaml").read_bytes() == before
    # An id clash with another file already there: refused, nothing written.
    (into / "other.yaml").write_text(
        "id: other\nname: Other\nchildren:\n  - {id: physics, name: P}\n"
    )
    src2 = write_csv(tmp_path / "p.csv", [["d", "s"], ["Physics", "Optics"]])
    with pytest.raises(ValidationError) as info:
        import_taxonomy(src2, into)
    assert "nothing was written" in str(info.value) and "duplicate id 'physics'" in str(info.value)
    assert not (into / "physics.yaml").exists()


def test_unknown_import_format(tmp_path: Path) -> None:
    (tmp_path / "o.xlsx").write_text("")
    with pytest.raises(InputError, match="cannot tell the format"):
        import_taxonomy(tmp_path / "o.xlsx", tmp_path / "tax")


# -- export -----------------------------------------------------------------------------------


def test_export_json_is_node_link_and_round_trips(tmp_path: Path) -> None:
    tax = load_taxonomy(DATA)
    text = export_taxonomy(tax, "json")
    g = nx.node_link_graph(json.loads(text), edges="edges")
    assert set(g.nodes) == set(tax.ids())
    assert {(a, b, k) for a, b, k in g.edges(data="kind")} == {
        (a, b, k) for a, b, k in tax.graph.edges(data="kind")
    }
    assert g.nodes["polynomials"]["weight"] == 2.0
    assert g.nodes["integrals"]["status"] == "proposed"
    # ...and our importer rebuilds the same taxonomy from it.
    (tmp_path / "t.json").write_text(text)
    import_taxonomy(tmp_path / "t.json", tmp_path / "tax")
    again = load_taxonomy(tmp_path / "tax")
    fields = (
        "id",
        "name",
        "description",
        "level",
        "weight",
        "prerequisites",
        "status",
        "parent",
        "children",
        "depth",
    )
    assert [tuple(getattr(n, f) for f in fields) for n in again] == [
        tuple(getattr(n, f) for f in fields) for n in tax
    ]
    assert export_taxonomy(again, "json") == text


def test_export_graphml_reads_back(tmp_path: Path) -> None:
    tax = load_taxonomy(DATA)
    path = tmp_path / "t.graphml"
    path.write_text(export_taxonomy(tax, "graphml"))
    g = nx.read_graphml(path)
    assert set(g.nodes) == set(tax.ids())
    assert g.number_of_edges() == tax.graph.number_of_edges()
    assert g.nodes["calculus"]["name"] == "Calculus"
    assert g.nodes["calculus"]["description"] == "Limits, derivatives and integrals."
    assert g.edges["algebra", "calculus"]["kind"] == "prerequisite"


def test_export_mermaid_and_dot(tmp_path: Path) -> None:
    tax = load_taxonomy(DATA)
    mermaid = export_taxonomy(tax, "mermaid").splitlines()
    assert mermaid[0] == "flowchart TD"
    assert '    n_calculus["Calculus"]' in mermaid
    assert "    n_calculus --> n_limits" in mermaid
    assert "    n_algebra -.->|prerequisite| n_calculus" in mermaid
    assert "    class n_integrals proposed" in mermaid
    assert sum("-->" in line or "-.->" in line for line in mermaid) == 16
    dot = export_taxonomy(tax, "dot")
    assert dot.startswith("digraph taxonomy {") and dot.rstrip().endswith("}")
    assert '"calculus" -> "limits";' in dot
    assert '"algebra" -> "calculus" [style=dashed' in dot
    assert '"calculus" [label="Calculus\\n(subject)"];' in dot
    assert dot.count("->") == 16
    sub = export_taxonomy(tax, "mermaid", subtree="calculus").splitlines()
    assert "    n_mechanics" not in "\n".join(sub) and "n_derivatives --> " not in "\n".join(sub)
    # The edge leaving the subtree stays, to a node marked external.
    assert "    n_algebra -.->|prerequisite| n_calculus" in sub
    assert "    class n_algebra external" in sub


def test_subtree_export_keeps_prerequisites_that_leave_it(tmp_path: Path) -> None:
    out = tmp_path / "physics.json"
    code, _, err = run("taxonomy", "export", "--subtree", "physics", "-o", str(out),
                       "--taxonomy", str(DATA))  # fmt: skip
    assert code == 0, err
    data = json.loads(out.read_text())
    external = {n["id"] for n in data["nodes"] if n.get("external")}
    assert external == {"calculus", "derivatives"}
    edges = {(e["source"], e["target"]) for e in data["edges"] if e["kind"] == "prerequisite"}
    assert edges == {
        ("calculus", "mechanics"),
        ("kinematics", "dynamics"),
        ("derivatives", "dynamics"),
    }
    # Imported next to mathematics the subtree is whole again, prerequisites included.
    into = tmp_path / "tax"
    into.mkdir()
    (into / "mathematics.yaml").write_text((DATA / "mathematics.yaml").read_text())
    import_taxonomy(out, into)
    back = load_taxonomy(into)
    assert back["dynamics"].prerequisites == ("kinematics", "derivatives")
    assert back["mechanics"].prerequisites == ("calculus",)
    assert sorted(p.name for p in into.iterdir()) == ["mathematics.yaml", "physics.yaml"]
    dot = export_taxonomy(load_taxonomy(DATA), "dot", subtree="physics")
    assert '"calculus" [label="Calculus\\n(subject)", color=gray60' in dot


def test_csv_unterminated_quote_is_reported_with_its_row(tmp_path: Path) -> None:
    src = tmp_path / "o.csv"
    src.write_text(
        "discipline,subject,topic,description\n"
        'Math,Algebra,Groups,"Symmetry, abstractly\n'
        "Math,Algebra,Rings,Addition and multiplication\n"
        "Math,Algebra,Fields,Division too\n"
    )
    code, out, err = run("taxonomy", "import", str(src), "--into", str(tmp_path / "t"))
    assert code == 2 and out == ""
    assert err.strip() == (
        f"{src}:2: not valid CSV (unexpected end of data) (a quote opened here is never closed)"
    )
    # A quote that closes later swallows rows in between: refused, not merged.
    src.write_text(
        "discipline,subject,topic,description\n"
        'Math,Algebra,Groups,"Symmetry\n'
        'Math,Algebra,Rings,Addition"\n'
        "Math,Algebra,Fields,Division too\n"
    )
    code, out, err = run("taxonomy", "import", str(src), "--into", str(tmp_path / "t"))
    assert code == 2 and f"{src}:2: row 2: a quoted value runs over lines 2-3" in err
    assert not (tmp_path / "t").exists()


def test_csv_conflicting_duplicate_rows_are_refused(tmp_path: Path) -> None:
    rows = [
        ["discipline", "subject", "topic", "description"],
        ["Math", "Algebra", "Groups", "Symmetry."],
        ["Math", "Algebra", "Rings", "Two operations."],
        ["Math", "Algebra", "Groups", "Symmetry."],  # an exact repeat: fine
        ["Math", "Algebra", "Groups", "Something else."],
    ]
    src = write_csv(tmp_path / "o.csv", rows)
    with pytest.raises(InputError) as info:
        read_csv_outline(src)
    p = info.value.problem
    assert (p.line, p.message) == (
        5,
        "row 5 repeats row 2 (Math > Algebra > Groups) with another description",
    )
    rows.pop()
    roots = read_csv_outline(write_csv(tmp_path / "ok.csv", rows))
    assert [t.name for t in roots[0].children[0].children] == ["Groups", "Rings"]


def test_cli_import_dry_run_prints_the_diff(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "o.csv", [["discipline", "subject"], ["Math", "Algebra"]])
    into = tmp_path / "t"
    code, out, err = run("taxonomy", "import", str(src), "--into", str(into), "--dry-run")
    assert code == 0, err
    assert out.startswith(f"--- /dev/null\n+++ b/{into / 'math.yaml'}\n")
    assert "+id: math\n" in out and "+  - id: algebra\n" in out
    assert err.startswith(f"would write 1 file(s) in {into}: 2 nodes")
    assert not into.exists()
    run("taxonomy", "import", str(src), "--into", str(into))
    src2 = write_csv(tmp_path / "o2.csv", [["discipline", "subject"], ["Math", "Geometry"]])
    code, out, err = run(
        "taxonomy", "import", str(src2), "--into", str(into), "--dry-run", "--force"
    )
    assert code == 0, err
    assert f"--- a/{into / 'math.yaml'}" in out
    assert "-  - id: algebra\n" in out and "+  - id: geometry\n" in out


def nested_outline(depth: int, width: int) -> dict:
    def node(name: str, level: int) -> dict:
        if level == depth:
            return {"name": name}
        return {"name": name, "children": [node(f"{name}.{i}", level + 1) for i in range(width)]}

    return node("Root", 1)


def test_nested_json_infers_its_depth(tmp_path: Path) -> None:
    src = tmp_path / "outline.json"
    src.write_text(json.dumps(nested_outline(4, 16)))  # 1 + 16 + 256 + 4096 = 4369 nodes
    into = tmp_path / "t"
    code, out, err = run("taxonomy", "import", str(src), "--into", str(into))
    assert code == 0, err
    assert out.strip() == (
        f"wrote 1 file(s) in {into}: 4369 nodes (1 level1, 16 level2, 256 level3, 4096 level4)"
    )
    assert "levels are named level1..levelN (name them with --levels)" in err
    assert load_taxonomy(into).stats()["per_level"] == {
        "level1": 1, "level2": 16, "level3": 256, "level4": 4096
    }  # fmt: skip
    # No deeper than [taxonomy] levels: those names.
    src.write_text(json.dumps(nested_outline(3, 2)))
    code, out, err = run("taxonomy", "import", str(src), "--into", str(tmp_path / "t3"))
    assert code == 0 and "(1 discipline, 2 subject, 4 topic)" in out and err == ""


def test_too_few_levels_is_one_line_with_a_count(tmp_path: Path) -> None:
    src = tmp_path / "outline.json"
    src.write_text(json.dumps(nested_outline(4, 16)))
    code, out, err = run("taxonomy", "import", str(src), "--into", str(tmp_path / "t"),
                         "--levels", "a,b,c")  # fmt: skip
    assert code == 2 and out == ""
    assert err.strip() == (
        f"{src}: a node nested 4 levels deep but only 3 level name(s) given (a, b, c) "
        "(4,096 times, first at $.children[0].children[0].children[0]) (pass --levels with "
        "one name per level, top first, or leave --levels out to name them level1..levelN)"
    )


def test_import_says_which_level_names_validate_would_take_for_typos(tmp_path: Path) -> None:
    rows = [["discipline", "subject", "topic", "subtopic"], ["Math", "Algebra", "Groups", "Cosets"]]
    src = write_csv(tmp_path / "o.csv", rows)
    into = tmp_path / "t"
    code, out, err = run("taxonomy", "import", str(src), "--into", str(into))
    assert code == 0, err
    assert err.strip() == (
        "note: level name(s) 'subtopic' are close to [taxonomy] levels names, so `corpus "
        "taxonomy validate` takes them for typos: add them to [taxonomy] levels in corpus.toml"
    )
    code, _, err = run("taxonomy", "validate", "--taxonomy", str(into))
    assert code == 2 and "unknown level 'subtopic'" in err
    cfg = tmp_path / "corpus.toml"
    cfg.write_text('[taxonomy]\nlevels = ["discipline", "subject", "topic", "subtopic"]\n')
    code, out, err = run("taxonomy", "validate", "--taxonomy", str(into), "--config", str(cfg))
    assert code == 0 and out.startswith("ok: "), err
    # Configured, the import says nothing; a vocabulary of its own needs no note either.
    code, _, err = run("taxonomy", "import", str(src), "--into", str(tmp_path / "t2"),
                       "--config", str(cfg))  # fmt: skip
    assert code == 0 and err == ""
    rows[0] = ["domain", "field", "subfield", "lesson"]
    code, _, err = run("taxonomy", "import", str(write_csv(tmp_path / "v.csv", rows)),
                       "--into", str(tmp_path / "t3"))  # fmt: skip
    assert code == 0 and err == ""


def test_cli_import_stats_export_round_trip(tmp_path: Path) -> None:
    rows = four_level_rows(500, seed=2)
    src = write_csv(tmp_path / "o.csv", rows)
    tax_dir = tmp_path / "tax"
    code, out, err = run(
        "taxonomy",
        "import",
        str(src),
        "--levels",
        "domain,field,subfield,topic",
        "--into",
        str(tax_dir),
    )
    assert (code, err) == (0, ""), err
    assert out.startswith("wrote 3 file(s)")
    assert run("taxonomy", "validate", "--taxonomy", str(tax_dir))[0] == 0
    code, out, _ = run("taxonomy", "stats", "--json", "--taxonomy", str(tax_dir))
    stats = json.loads(out)
    assert stats["per_level"] == distinct_paths_per_level(rows)
    assert stats["nodes"] == sum(stats["per_level"].values()) and stats["depth"] == 4
    code, _, err = run(
        "taxonomy",
        "export",
        "--format",
        "json",
        "-o",
        str(tmp_path / "t.json"),
        "--taxonomy",
        str(tax_dir),
    )
    assert code == 0 and "wrote" in err
    g = nx.node_link_graph(json.loads((tmp_path / "t.json").read_text()), edges="edges")
    assert g.number_of_nodes() == stats["nodes"]
    code, _, _ = run(
        "taxonomy", "import", str(tmp_path / "t.json"), "--into", str(tmp_path / "again")
    )
    assert code == 0
    assert {p.name: p.read_text() for p in (tmp_path / "again").iterdir()} == {
        p.name: p.read_text().replace("o.csv", "t.json") for p in tax_dir.iterdir()
    }
    code, _, err = run("taxonomy", "import", str(src), "--into", str(tax_dir))
    assert code == 2 and "would overwrite" in err
    bad = write_csv(tmp_path / "bad.csv", [["a", "b"], ["A", ""]])
    code, _, err = run("taxonomy", "import", str(bad), "--into", str(tmp_path / "x"))
    assert code == 2 and err.startswith(f"{bad}:2: row 2: empty 'b' value")
