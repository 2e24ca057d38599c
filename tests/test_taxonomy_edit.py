"""Curator edits keep comments and formatting, and refuse to break the taxonomy
(builder.taxonomy.edit and the `corpus taxonomy add|move|rename|remove` commands)."""

from __future__ import annotations

import difflib
import re
import shutil
from pathlib import Path

import pytest

from builder.cli import main
from builder.errors import TaxonomyError, ValidationError
from builder.taxonomy import TaxonomyEditor, load_taxonomy

DATA = Path(__file__).parent / "data" / "taxonomy_small"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    dest = tmp_path / "taxonomy"
    shutil.copytree(DATA, dest)
    return dest


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def changed_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    """(removed, added) lines between two texts."""
    removed, added = [], []
    for line in difflib.ndiff(before.splitlines(), after.splitlines()):
        if line.startswith("- "):
            removed.append(line[2:])
        elif line.startswith("+ "):
            added.append(line[2:])
    return removed, added


def comments(text: str) -> list[str]:
    return [line.split("#", 1)[1] for line in text.splitlines() if "#" in line]


def run(*args: str) -> tuple[int, str, str]:
    """Run `corpus ARGS` in-process; returns (exit code, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def test_add_keeps_everything_else_and_matches_sibling_style(root: Path) -> None:
    before = (root / "mathematics.yaml").read_text()
    editor = TaxonomyEditor(root)
    assert editor.add_node("algebra", "matrices", "Matrices") == root / "mathematics.yaml"
    editor.add_node(
        "calculus",
        "series",
        "Series",
        description="Sums of sequences.",
        status="proposed",
        comment="proposed by a test",
    )
    tax = editor.save()
    after = (root / "mathematics.yaml").read_text()
    removed, added = changed_lines(before, after)
    assert removed == []
    assert added == [
        "      - {id: matrices, name: Matrices, level: topic}",  # flow, like its siblings
        "      - id: series",
        "        name: Series",
        "        description: Sums of sequences.",
        "        level: topic",
        "        status: proposed  # proposed by a test",
    ]
    assert tax["matrices"].level == "topic"  # inferred from the siblings
    assert tax["series"].status == "proposed"
    assert load_taxonomy(root)["series"].parent == "calculus"
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp files left


def test_add_first_child_infers_the_next_level_and_block_style(root: Path) -> None:
    editor = TaxonomyEditor(root)
    editor.add_node("limits", "epsilon-delta", "Epsilon-delta proofs")
    tax = editor.save()
    assert tax["epsilon-delta"].parent == "limits"
    assert tax["epsilon-delta"].level is None  # 'topic' is the last known level
    editor = TaxonomyEditor(root)
    editor.add_node("equations", "systems", "Systems of equations")  # parent is {...} style
    editor.save()
    text = (root / "mathematics.yaml").read_text()
    assert "      - id: equations\n        name: Linear equations\n" in text
    assert "        children:\n          - id: systems\n" in text
    editor = TaxonomyEditor(root, levels=["discipline", "subject", "topic", "subtopic"])
    editor.add_node("kinematics", "projectiles", "Projectile motion")
    assert editor.save()["projectiles"].level == "subtopic"


def test_add_new_discipline_gets_its_own_file(root: Path) -> None:
    editor = TaxonomyEditor(root)
    path = editor.add_node(None, "chemistry", "Chemistry")
    editor.add_node("chemistry", "stoichiometry", "Stoichiometry", level="subject")
    tax = editor.save()
    assert path == root / "chemistry.yaml"
    assert path.read_text() == (
        "id: chemistry\nname: Chemistry\nlevel: discipline\nchildren:\n"
        "  - id: stoichiometry\n    name: Stoichiometry\n    level: subject\n"
    )
    assert tax.discipline_of("stoichiometry").id == "chemistry"


def test_add_refuses_bad_or_duplicate_ids(root: Path) -> None:
    editor = TaxonomyEditor(root)
    with pytest.raises(TaxonomyError, match=r"already exists \(.*mathematics.yaml:21\)"):
        editor.add_node("physics", "limits", "Limits again")
    with pytest.raises(TaxonomyError, match="not a slug") as info:
        editor.add_node("physics", "Optics Basics", "Optics")
    assert info.value.problem.hint == "use 'optics-basics'"
    with pytest.raises(TaxonomyError, match="unknown taxonomy id 'mechanic'") as info:
        editor.add_node("mechanic", "optics", "Optics")
    assert "mechanics" in (info.value.problem.hint or "")
    with pytest.raises(TaxonomyError, match="already exists"):
        editor.add_node("-", "mathematics", "Maths")


def test_refused_edit_leaves_files_byte_identical(root: Path) -> None:
    before = snapshot(root)
    editor = TaxonomyEditor(root)
    editor.add_node("algebra", "groups", "Groups", prerequisites=["no-such-node"])
    with pytest.raises(ValidationError) as info:
        editor.save()
    text = str(info.value)
    assert "nothing was written" in text
    assert "mathematics.yaml:" in text and "'no-such-node'" in text
    assert snapshot(root) == before


def test_move_that_creates_a_cycle_is_refused(root: Path) -> None:
    before = snapshot(root)
    editor = TaxonomyEditor(root)
    # algebra is a prerequisite of calculus; under limits it would be part of calculus.
    editor.move_node("algebra", "limits")
    with pytest.raises(ValidationError, match="'calculus' lists its own descendant 'algebra'"):
        editor.save()
    assert snapshot(root) == before
    # dynamics already needs derivatives; making derivatives need dynamics closes a cycle.
    editor = TaxonomyEditor(root)
    editor.set_fields("derivatives", prerequisites=["limits", "dynamics"])
    with pytest.raises(ValidationError, match="prerequisite cycle: derivatives -> "):
        editor.save()
    assert snapshot(root) == before


def test_move_across_files_keeps_comments(root: Path) -> None:
    # (Moving derivatives instead would be refused: integrals, still in calculus, needs it,
    # and mechanics needs all of calculus first.)
    math_before = (root / "mathematics.yaml").read_text()
    editor = TaxonomyEditor(root)
    assert editor.move_node("integrals", "mechanics") == root / "physics.yaml"
    tax = editor.save()
    assert tax["integrals"].parent == "mechanics"
    assert tax["integrals"].file == root / "physics.yaml"
    assert tax["integrals"].prerequisites == ("derivatives",)
    math_after = (root / "mathematics.yaml").read_text()
    removed, added = changed_lines(math_before, math_after)
    assert added == [] and [r.strip() for r in removed] == [
        "- id: integrals",
        "name: Integrals",
        "level: topic",
        "status: proposed",
        "prerequisites: [derivatives]",
    ]
    physics = (root / "physics.yaml").read_text()
    assert comments(physics) == [" Physics (test fixture)", " cross-file prerequisite"]
    assert physics.endswith(
        "      - id: integrals\n        name: Integrals\n        level: topic\n"
        "        status: proposed\n        prerequisites: [derivatives]\n"
    )


def test_move_into_own_subtree_is_refused(root: Path) -> None:
    editor = TaxonomyEditor(root)
    with pytest.raises(TaxonomyError, match="'limits' is inside 'calculus'"):
        editor.move_node("calculus", "limits")
    with pytest.raises(TaxonomyError, match="inside"):
        editor.move_node("calculus", "calculus")


def test_move_to_and_from_top_level(root: Path) -> None:
    editor = TaxonomyEditor(root)
    assert editor.move_node("mechanics", "-") == root / "mechanics.yaml"
    tax = editor.save()
    assert tax["mechanics"].parent is None and tax["kinematics"].depth == 1
    assert (root / "mechanics.yaml").read_text().startswith("id: mechanics\n")
    editor = TaxonomyEditor(root)
    editor.move_node("physics", "mathematics")  # a whole discipline under another one
    tax = editor.save()
    assert not (root / "physics.yaml").exists()
    assert tax.path_ids("physics") == "mathematics/physics"


def test_rename_changes_one_line(root: Path) -> None:
    before = (root / "mathematics.yaml").read_text()
    editor = TaxonomyEditor(root)
    editor.rename_node("calculus", "Calculus: one variable")
    editor.rename_node("polynomials", "Polynomial algebra")
    editor.save()
    removed, added = changed_lines(before, (root / "mathematics.yaml").read_text())
    assert removed == [
        "      - {id: polynomials, name: 'Polynomials', level: topic, weight: 2}",
        '    name: "Calculus"',
    ]
    assert added == [
        "      - {id: polynomials, name: 'Polynomial algebra', level: topic, weight: 2}",
        '    name: "Calculus: one variable"',  # the quote style is kept
    ]
    with pytest.raises(TaxonomyError, match="empty"):
        TaxonomyEditor(root).rename_node("calculus", " ")


def test_remove_refusals_name_children_and_dependents(root: Path) -> None:
    editor = TaxonomyEditor(root)
    with pytest.raises(TaxonomyError, match="it has children 'limits', 'derivatives'") as info:
        editor.remove_node("calculus")
    assert "--cascade" in (info.value.problem.hint or "")
    with pytest.raises(TaxonomyError, match="prerequisite of 'integrals', 'dynamics'"):
        editor.remove_node("derivatives")
    editor.remove_node("equations")
    tax = editor.save()
    assert "equations" not in tax and tax.children("algebra")[0].id == "polynomials"


def test_remove_cascade_drops_subtree_and_references(root: Path) -> None:
    editor = TaxonomyEditor(root)
    removed = editor.remove_node("calculus", cascade=True)
    assert removed == ["calculus", "limits", "derivatives", "integrals"]
    tax = editor.save()
    assert "derivatives" not in tax
    assert tax["mechanics"].prerequisites == ()
    assert tax["dynamics"].prerequisites == ("kinematics",)
    physics = (root / "physics.yaml").read_text()
    assert "prerequisites: [kinematics]" in physics
    assert "# Physics (test fixture)" in physics
    math = (root / "mathematics.yaml").read_text()
    assert "# Algebra comes first." in math and "calculus" not in math
    assert "Calculus needs algebra" not in math, "the removed node's comment goes with it"


def test_cli_remove_cascade_takes_the_comment_above_the_node(root: Path) -> None:
    code, out, err = run("taxonomy", "remove", "calculus", "--cascade", "--taxonomy", str(root))
    assert code == 0, err
    math = (root / "mathematics.yaml").read_text()
    assert "# Calculus needs algebra." not in math
    assert "# Algebra comes first." in math and "# the discipline" in math


def test_remove_a_whole_discipline_deletes_its_file(root: Path) -> None:
    editor = TaxonomyEditor(root)
    editor.remove_node("physics", cascade=True)
    editor.save()
    assert sorted(p.name for p in root.iterdir()) == ["mathematics.yaml"]


def test_set_status_and_fields(root: Path) -> None:
    editor = TaxonomyEditor(root)
    editor.set_status(["integrals", "limits"], "approved")
    editor.set_status(["kinematics"], "proposed")
    editor.set_fields("kinematics", description="Motion without forces.", weight=2)
    tax = editor.save()
    assert tax["integrals"].status == "approved" and tax["kinematics"].status == "proposed"
    text = (root / "physics.yaml").read_text()
    assert (
        "      - id: kinematics\n        name: Kinematics\n        level: topic\n"
        "        status: proposed\n        description: Motion without forces.\n"
        "        weight: 2\n"
    ) in text
    assert "status: approved" in (root / "mathematics.yaml").read_text()
    with pytest.raises(TaxonomyError):
        editor.set_status(["limits"], "draft")


def test_editor_refuses_unparseable_files(root: Path) -> None:
    (root / "broken.yaml").write_text("id: x\nname: [\n")
    with pytest.raises(ValidationError, match="fix these problems first"):
        TaxonomyEditor(root)
    (root / "broken.yaml").write_text("id: x\nname: X\nname: Y\n")
    with pytest.raises(ValidationError) as info:
        TaxonomyEditor(root)
    assert f"{root / 'broken.yaml'}:3: duplicate key 'name'" in str(info.value)


def test_diff_and_check_do_not_write(root: Path) -> None:
    before = snapshot(root)
    editor = TaxonomyEditor(root)
    editor.rename_node("limits", "Limits")
    diff = editor.diff()
    assert "-        name: Limits and continuity\n+        name: Limits\n" in diff
    assert editor.check()[0] == []
    assert snapshot(root) == before


# -- the CLI ----------------------------------------------------------------------------------


def test_cli_edit_round_trip_keeps_comments(root: Path) -> None:
    t = ("--taxonomy", str(root))
    before = {p.name: p.read_text() for p in root.iterdir()}
    code, out, err = run(
        "taxonomy", "add", "mechanics", "--name", "Optics basics", "-p", "kinematics", *t
    )
    assert (code, err) == (0, "")
    assert "added 'optics-basics' under 'mechanics'" in out
    assert run("taxonomy", "move", "optics-basics", "--to", "physics", *t)[0] == 0
    assert run("taxonomy", "rename", "optics-basics", "--name", "Optics", *t)[0] == 0
    assert run("taxonomy", "add", "-", "--id", "chemistry", "--name", "Chemistry", *t)[0] == 0
    assert run("taxonomy", "remove", "chemistry", *t)[0] == 0
    code, out, _ = run("taxonomy", "remove", "optics-basics", *t)
    assert code == 0 and "removed 'optics-basics'" in out
    after = {p.name: p.read_text() for p in root.iterdir()}
    assert after == before  # back where we started, comments and all


def test_cli_refusals_exit_2_without_writing(root: Path) -> None:
    before = snapshot(root)
    t = ("--taxonomy", str(root))
    code, out, err = run("taxonomy", "remove", "derivatives", *t)
    assert code == 2 and out == ""
    assert err.startswith("error: cannot remove 'derivatives': it is a prerequisite of")
    code, _, err = run(
        "taxonomy", "add", "algebra", "--id", "groups", "--name", "Groups", "-p", "nope", *t
    )
    assert code == 2
    assert "nothing was written" in err and "mathematics.yaml:" in err
    code, _, err = run("taxonomy", "move", "algebra", "--to", "limits", *t)
    assert code == 2 and "lists its own descendant 'algebra'" in err
    # Ids are words joined by '-': an '_' is refused, and the message does not say it is fine.
    code, _, err = run("taxonomy", "add", "algebra", "--id", "group_theory", "--name", "G", *t)
    assert code == 2 and err.strip() == (
        "error: id 'group_theory' is not a slug (lowercase letters and digits in words joined "
        "by single '-') (use 'group-theory')"
    )
    assert "Traceback" not in err
    assert snapshot(root) == before


def test_cli_dry_run_prints_diff(root: Path) -> None:
    before = snapshot(root)
    code, out, err = run(
        "taxonomy", "rename", "limits", "--name", "Limits", "--dry-run", "--taxonomy", str(root)
    )
    assert code == 0 and "+        name: Limits\n" in out and "would:" in err
    assert snapshot(root) == before


# -- comments between list items stay with the item they sit above ----------------------------

COMMENTED = """\
# file header
id: m
name: M
children:
  # before a
  - id: a
    name: A
    children:
      - {id: a1, name: A1}

  # before b
  - id: b
    name: B  # eol b

  # before c
  - id: c
    name: C
    children:
      - id: c1
        name: C1
  # before d
  - {id: d, name: D}
  # before e
  - {id: e, name: E}
# after everything
"""


def commented(tmp_path: Path) -> Path:
    root = tmp_path / "c"
    root.mkdir()
    (root / "m.yaml").write_text(COMMENTED)
    return root


def block_of(text: str, node_id: str) -> list[str]:
    """The comment/blank lines directly above the line that starts node ``node_id``."""
    lines = text.splitlines()
    i = next(k for k, line in enumerate(lines) if f"id: {node_id}" in line)
    out = []
    for line in reversed(lines[:i]):
        if line.strip() and not line.strip().startswith("#"):
            break
        out.append(line.strip())
    return list(reversed(out))


def test_moved_item_takes_its_comment_and_leaves_the_next_ones(tmp_path: Path) -> None:
    root = commented(tmp_path)
    editor = TaxonomyEditor(root)
    editor.move_node("b", "c")
    editor.save()
    text = (root / "m.yaml").read_text()
    assert block_of(text, "b") == ["", "# before b"]
    assert block_of(text, "c") == ["", "# before c"]
    assert re.search(r"\n        name: B +# eol b\n", text)
    assert "\n  # before d\n  - {id: d, name: D}\n" in text  # same place, same column
    assert text.startswith("# file header\n") and text.endswith("# after everything\n")
    assert sorted(comments(text)) == sorted(comments(COMMENTED))


def test_moving_the_last_item_leaves_comments_after_the_list(tmp_path: Path) -> None:
    root = commented(tmp_path)
    editor = TaxonomyEditor(root)
    editor.move_node("e", "a")
    editor.save()
    text = (root / "m.yaml").read_text()
    assert block_of(text, "e") == ["# before e"]
    assert text.endswith("  - {id: d, name: D}\n# after everything\n")
    assert sorted(comments(text)) == sorted(comments(COMMENTED))


def test_removed_items_take_their_comment_and_leave_the_next_ones(tmp_path: Path) -> None:
    root = commented(tmp_path)
    editor = TaxonomyEditor(root)
    editor.remove_node("d")
    editor.remove_node("a", cascade=True)
    editor.save()
    text = (root / "m.yaml").read_text()
    assert block_of(text, "b") == ["", "# before b"]
    assert block_of(text, "e") == ["# before e"]
    gone = [" before a", " before d"]
    assert sorted(comments(text)) == sorted(c for c in comments(COMMENTED) if c not in gone)


def test_emptied_children_list_keeps_the_comments_below_it(tmp_path: Path) -> None:
    root = commented(tmp_path)
    editor = TaxonomyEditor(root)
    editor.move_node("c1", "b")
    editor.move_node("a", "-")
    tax = editor.save()
    text = (root / "m.yaml").read_text()
    assert "children" not in text.split("id: c", 1)[1].split("id: d")[0]
    assert block_of(text, "d") == ["# before d"]
    assert block_of(text, "c1") == []
    assert tax["c1"].parent == "b"
    a_text = (root / "a.yaml").read_text()
    assert a_text.startswith("# before a\nid: a\n")
    assert sorted(comments(text) + comments(a_text)) == sorted(comments(COMMENTED))


def test_line_endings_and_bom_are_kept(tmp_path: Path) -> None:
    root = tmp_path / "w"
    root.mkdir()
    original = "\ufeffid: a\r\nname: A  # note\r\nchildren:\r\n  - {id: b, name: B}\r\n"
    (root / "a.yaml").write_bytes(original.encode("utf-8"))
    editor = TaxonomyEditor(root)
    editor.add_node("a", "c", "C")
    editor.save()
    data = (root / "a.yaml").read_bytes()
    assert data == (original + "  - {id: c, name: C}\r\n").encode("utf-8")


# -- prerequisites of an existing node -------------------------------------------------------


def test_cli_prereq_add_and_remove_keep_comments(root: Path) -> None:
    math = root / "mathematics.yaml"
    before = math.read_text()
    code, out, err = run("taxonomy", "prereq", "add", "integrals", "limits", "--dry-run",
                         "--taxonomy", str(root))  # fmt: skip
    assert code == 0, err
    assert (
        "-        prerequisites: [derivatives]\n+        prerequisites: [derivatives, limits]"
        in out
    )
    assert "would: 'integrals' now requires 'limits'" in err
    assert math.read_text() == before, "--dry-run writes nothing"

    code, out, err = run(
        "taxonomy", "prereq", "add", "integrals", "limits", "--taxonomy", str(root)
    )
    assert code == 0, err
    assert load_taxonomy(root)["integrals"].prerequisites == ("derivatives", "limits")
    removed, added = changed_lines(before, math.read_text())
    assert [r.strip() for r in removed] == ["prerequisites: [derivatives]"]
    assert [a.strip() for a in added] == ["prerequisites: [derivatives, limits]"]
    assert comments(math.read_text()) == comments(before)

    # A block-style node without prerequisites gets a flow list before its children.
    code, _, err = run(
        "taxonomy", "prereq", "add", "algebra", "kinematics", "--taxonomy", str(root)
    )
    assert code == 2 and "prerequisite cycle" in err  # mechanics needs calculus needs algebra
    code, _, err = run(
        "taxonomy", "prereq", "add", "kinematics", "algebra", "--taxonomy", str(root)
    )
    assert code == 0, err
    assert "        prerequisites: [algebra]\n" in (root / "physics.yaml").read_text()

    for pre in ("derivatives", "limits"):
        code, out, err = run(
            "taxonomy", "prereq", "remove", "integrals", pre, "--taxonomy", str(root)
        )
        assert code == 0, err
        assert out.strip() == f"'integrals' no longer requires {pre!r} ({math})"
    assert load_taxonomy(root)["integrals"].prerequisites == ()
    assert "prerequisites: [derivatives" not in math.read_text()
    assert comments(math.read_text()) == comments(before)


def test_cli_prereq_refusals_are_one_clear_message(root: Path) -> None:
    before = snapshot(root)
    code, out, err = run(
        "taxonomy", "prereq", "add", "limits", "derivatives", "--taxonomy", str(root)
    )
    assert code == 2 and out == ""
    math = root / "mathematics.yaml"
    cycle = next(line for line in err.splitlines() if "prerequisite cycle" in line)
    assert cycle.startswith(f"{math}:24: prerequisite cycle: limits -> derivatives -> limits")
    assert f"'limits' requires 'derivatives' ({math}:24)" in cycle, "the edge just added"
    assert f"'derivatives' requires 'limits' ({math}:28)" in cycle
    code, _, err = run("taxonomy", "prereq", "add", "limits", "derivativs", "--taxonomy", str(root))
    assert (
        code == 2
        and "unknown taxonomy id 'derivativs'" in err
        and "did you mean derivatives" in err
    )
    # Never the node itself as a suggestion.
    code, _, err = run("taxonomy", "prereq", "add", "limits", "limitz", "--taxonomy", str(root))
    assert code == 2 and "did you mean limits" not in err
    code, _, err = run("taxonomy", "prereq", "add", "limits", "limits", "--taxonomy", str(root))
    assert code == 2 and "cannot be its own prerequisite" in err
    code, _, err = run(
        "taxonomy", "prereq", "remove", "derivatives", "algebra", "--taxonomy", str(root)
    )
    assert code == 2
    assert err.strip() == (
        "error: 'algebra' is not a prerequisite of 'derivatives' (its prerequisites are 'limits')"
    )
    assert snapshot(root) == before


def test_cli_add_with_a_typo_prerequisite_never_suggests_the_new_node(root: Path) -> None:
    code, _, err = run("taxonomy", "add", "calculus", "--id", "calculus-series", "--name", "Series",
                       "-p", "calculus-seris", "--taxonomy", str(root))  # fmt: skip
    assert code == 2 and "prerequisite 'calculus-seris' of 'calculus-series' is not a node" in err
    assert "did you mean 'calculus-series'" not in err
