"""`corpus taxonomy validate|show|stats` and the shared --taxonomy resolution
(builder/cli/taxonomy.py)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from builder.cli import main
from builder.cli.taxonomy import resolve_taxonomy_dir

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data" / "taxonomy_small"
COMMANDS = ["validate", "show", "stats", "add", "move", "rename", "remove", "import", "export"]


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    root = tmp_path / "taxonomy"
    shutil.copytree(DATA, root)
    text = (root / "physics.yaml").read_text()
    text = text.replace("prerequisites: [calculus]", "prerequisites: [calculas]")
    text = text.replace("name: Kinematics", "name: ''\n        stauts: proposed")
    (root / "physics.yaml").write_text(text)
    return root


def test_starter_taxonomy_validates() -> None:
    code, out, err = run("taxonomy", "validate", "--taxonomy", str(ROOT / "taxonomy"))
    assert code == 0, err
    assert out.startswith("ok: ")


def test_validate_ok_summary() -> None:
    code, out, _ = run("taxonomy", "validate", "--taxonomy", str(DATA))
    assert code == 0
    assert out.strip() == (
        f"ok: {DATA}: 2 discipline(s), 12 nodes (1 proposed), 7 leaves, depth 3, "
        "0 syllabi (0 approved, 0 proposed)"
    )


SYLLABUS = """\
subject: {subject}
status: {status}
sessions:
  - title: Basics
    goals: [Know the basics]
    concepts: [first idea, second idea, third idea]
"""


def test_validate_counts_proposed_syllabi_and_prints_level_warnings(tmp_path: Path) -> None:
    root = tmp_path / "taxonomy"
    shutil.copytree(DATA, root)
    syllabi = root / "mathematics" / "syllabi"
    syllabi.mkdir(parents=True)
    (syllabi / "algebra.yaml").write_text(SYLLABUS.format(subject="algebra", status="approved"))
    (syllabi / "calculus.yaml").write_text(SYLLABUS.format(subject="calculus", status="proposed"))
    math = root / "mathematics.yaml"
    math.write_text(
        math.read_text().replace(
            "name: Limits and continuity\n        level: topic",
            "name: Limits and continuity\n        level: subject",
        )
    )
    code, out, err = run("taxonomy", "validate", "--taxonomy", str(root))
    assert code == 0, err
    assert out.strip().endswith(", 2 syllabi (1 approved, 1 proposed)")
    assert err.splitlines() == [
        f"warning: {math}:23: level 'subject' of 'limits' is also the level of its ancestor "
        "'calculus': levels go one step down per depth (fix the level or remove it)"
    ]


def test_validate_refuses_a_level_typo_at_its_line(tmp_path: Path) -> None:
    root = tmp_path / "taxonomy"
    shutil.copytree(DATA, root)
    math = root / "mathematics.yaml"
    math.write_text(
        math.read_text().replace(
            "name: Algebra\n    level: subject", "name: Algebra\n    level: subjet"
        )
    )
    code, out, err = run("taxonomy", "validate", "--taxonomy", str(root))
    assert code == 2 and out == ""
    assert err.splitlines()[0] == (
        f"{math}:9: unknown level 'subjet' of 'algebra' (did you mean 'subject'? known "
        "levels: discipline, subject, topic (add others to [taxonomy] levels))"
    )
    code, _, err = run("taxonomy", "stats", "--taxonomy", str(root))
    assert code == 2 and "unknown level 'subjet'" in err


def test_an_unknown_level_among_known_ones_is_refused_but_a_vocabulary_is_not(
    tmp_path: Path,
) -> None:
    # `course` on one subject (no typo of a known name) made each of its topics a subject of
    # its own in the walk; its file uses `subject` at that depth, so it is a mistake.
    root = tmp_path / "taxonomy"
    shutil.copytree(DATA, root)
    math = root / "mathematics.yaml"
    good = math.read_text()
    math.write_text(
        good.replace("name: Algebra\n    level: subject", "name: Algebra\n    level: course")
    )
    for command in ("validate", "stats", "show"):
        code, out, err = run("taxonomy", command, "--taxonomy", str(root))
        assert code == 2 and out == ""
        assert err.splitlines()[0] == (
            f"{math}:9: unknown level 'course' of 'algebra' (the other nodes at its depth in "
            "this file are 'subject') (use level: subject, or add 'course' to [taxonomy] levels "
            "if it is a level of its own)"
        )
    code, _, err = run("walk", "--taxonomy", str(root))
    assert code == 2 and "unknown level 'course'" in err
    # Listed in [taxonomy] levels, it is a level of its own.
    cfg = tmp_path / "corpus.toml"
    cfg.write_text('[taxonomy]\nlevels = ["discipline", "subject", "course", "topic"]\n')
    code, out, err = run("taxonomy", "validate", "--taxonomy", str(root), "--config", str(cfg))
    assert code == 0 and out.startswith("ok: "), err
    # A file of its own vocabulary, or a level below the known ones, is not a mistake.
    math.write_text(
        good.replace("level: discipline", "level: domain")
        .replace("level: subject", "level: field")
        .replace("level: topic", "level: subfield")
    )
    physics = root / "physics.yaml"
    physics.write_text(
        physics.read_text().replace(
            "name: Kinematics\n",
            "name: Kinematics\n        children: [{id: projectiles, name: Projectiles, "
            "level: lesson}]\n",
        )
    )
    code, out, err = run("taxonomy", "validate", "--taxonomy", str(root))
    assert code == 0 and out.startswith("ok: ") and err == "", err


def test_validate_broken_lists_every_problem_and_exits_2(broken: Path) -> None:
    code, out, err = run("taxonomy", "validate", "--taxonomy", str(broken))
    assert code == 2 and out == ""
    lines = err.splitlines()
    f = broken / "physics.yaml"
    assert lines[0].startswith(f"{f}:9: prerequisite 'calculas' of 'mechanics' is not a node")
    assert "did you mean 'calculus'?" in lines[0]
    assert lines[1].startswith(f"{f}:12: name of 'kinematics' is empty")
    assert lines[2].startswith(f"{f}:13: unknown key 'stauts' (did you mean 'status'?")
    assert lines[3].startswith("error: 3 problem(s) in ")
    assert len(lines) == 4


def test_user_errors_print_no_traceback(broken: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "builder", "taxonomy", "validate", "--taxonomy", str(broken)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{broken / 'physics.yaml'}:9:" in proc.stderr


def test_validate_also_checks_syllabi(tmp_path: Path) -> None:
    tax_dir = tmp_path / "taxonomy"
    shutil.copytree(DATA, tax_dir)
    syllabus = tax_dir / "mathematics" / "syllabi" / "calculus.yaml"
    syllabus.parent.mkdir(parents=True)
    syllabus.write_text(
        "subject: calculus\n"
        "status: proposed\n"
        "sessions:\n"
        "  - title: Limits\n"
        "    goals: [Compute limits]\n"
        "    concepts: []\n",
        encoding="utf-8",
    )
    code, _, err = run("taxonomy", "validate", "--taxonomy", str(tax_dir))
    assert code == 2
    assert "calculus.yaml:" in err and "Traceback" not in err


def test_show_tree_and_depth() -> None:
    code, out, _ = run("taxonomy", "show", "calculus", "--taxonomy", str(DATA))
    assert code == 0
    assert out.splitlines() == [
        "calculus  Calculus  [subject]  requires: algebra",
        "  limits  Limits and continuity  [topic]",
        "  derivatives  Derivatives  [topic]  requires: limits",
        "  integrals  Integrals  [topic]  (proposed)  requires: derivatives",
    ]
    code, out, _ = run("taxonomy", "show", "--depth", "1", "--taxonomy", str(DATA))
    assert out.splitlines() == [
        "mathematics  Mathematics  [discipline]",
        "  algebra  Algebra  [subject]  (+2 below)",
        "  calculus  Calculus  [subject]  requires: algebra  (+3 below)",
        "physics  Physics  [discipline]",
        "  mechanics  Classical mechanics  [subject]  requires: calculus  (+2 below)",
    ]
    code, _, err = run("taxonomy", "show", "calculos", "--taxonomy", str(DATA))
    assert code == 2 and "unknown taxonomy id 'calculos'" in err and "calculus" in err


def test_stats_text_and_json() -> None:
    code, out, _ = run("taxonomy", "stats", "--taxonomy", str(DATA))
    assert code == 0
    assert "2 discipline(s) in 2 file(s), 12 nodes (11 approved, 1 proposed), 7 leaves" in out
    assert "  topic             7" in out
    code, out, _ = run("taxonomy", "stats", "--json", "--taxonomy", str(DATA))
    data = json.loads(out)
    assert data["nodes"] == 12 and data["leaves"] == 7 and data["depth"] == 3
    assert data["per_level"] == {"discipline": 2, "subject": 3, "topic": 7}


def test_missing_directory_is_a_user_error(tmp_path: Path) -> None:
    code, _, err = run("taxonomy", "stats", "--taxonomy", str(tmp_path / "nope"))
    assert code == 2 and "does not exist" in err and "Traceback" not in err


def test_resolve_taxonomy_dir_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_taxonomy_dir(None, None) == Path("taxonomy")
    (tmp_path / "corpus.toml").write_text('[taxonomy]\ndir = "cfg-tax"\n')
    assert resolve_taxonomy_dir(None, None) == Path("cfg-tax")
    sub = tmp_path / "proj"
    sub.mkdir()
    (sub / "other.toml").write_text('[taxonomy]\ndir = "t"\n')
    assert resolve_taxonomy_dir(None, str(sub / "other.toml")) == Path("proj/t")
    monkeypatch.setenv("CORPUS_TAXONOMY_DIR", "env-tax")
    assert resolve_taxonomy_dir(None, None) == Path("env-tax")
    assert resolve_taxonomy_dir("flag-tax", None) == Path("flag-tax")


def test_config_dir_is_used_by_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(DATA, tmp_path / "mytax")
    (tmp_path / "corpus.toml").write_text('[taxonomy]\ndir = "mytax"\n')
    monkeypatch.chdir(tmp_path)
    code, out, _ = run("taxonomy", "stats", "--json")
    assert code == 0 and json.loads(out)["nodes"] == 12


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_with_an_example(name: str) -> None:
    code, out, _ = run("taxonomy", name, "--help")
    assert code == 0
    assert "Example:" in out and "--taxonomy" in out


def test_show_and_validate_put_a_syntax_error_first(tmp_path: Path) -> None:
    root = tmp_path / "taxonomy"
    shutil.copytree(DATA, root)
    math = root / "mathematics.yaml"
    math.write_text(math.read_text().replace("name: Algebra", "name: Algebra: the basics"))
    for command in ("show", "validate", "stats"):
        code, out, err = run("taxonomy", command, "--taxonomy", str(root))
        assert code == 2 and out == ""
        lines = err.splitlines()
        assert lines[0].startswith(f"{math}:8: YAML syntax error: mapping values are not allowed")
        assert "quote values that contain ': '" in lines[0]
        # physics.yaml's two prerequisites into the unreadable file: one line, not two.
        assert lines[1].startswith(
            f"{root / 'physics.yaml'}:9: 2 prerequisite(s) could not be checked because "
            f"{math} could not be read (first: 'calculus' of 'mechanics' and 1 more)"
        )
        assert len([line for line in lines if "prerequisite" in line]) == 1
