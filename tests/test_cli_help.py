"""Every ``corpus`` command and subcommand has ``--help`` text with an example (docs that
cannot rot: the help is the command's docstring)."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from builder.cli import LazyGroup, cli


def _commands() -> list[tuple[str, ...]]:
    """The path of every command and group of the ``corpus`` tree (lazy ones imported)."""
    found: list[tuple[str, ...]] = [()]

    def visit(group: click.Group, path: tuple[str, ...]) -> None:
        ctx = click.Context(group, info_name=" ".join(("corpus", *path)))
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            assert command is not None, f"corpus {' '.join((*path, name))} cannot be loaded"
            found.append((*path, name))
            if isinstance(command, click.Group):
                visit(command, (*path, name))

    visit(cli, ())
    return found


COMMANDS = _commands()


def test_the_tree_is_walked_through_lazy_groups() -> None:
    assert isinstance(cli, LazyGroup)
    names = {" ".join(p) for p in COMMANDS}
    for expected in ("build", "plan", "report", "walk", "taxonomy", "taxonomy validate"):
        assert expected in names
    assert len(COMMANDS) > 15


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(("corpus", *p)))
def test_help_has_an_example(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="corpus")
    assert result.exit_code == 0, result.output
    assert "Usage: corpus" in result.output
    assert "Example" in result.output, f"corpus {' '.join(path)} --help has no example"


# -- the examples in the help work against the shipped taxonomy and templates ---------------

ROOT = Path(__file__).resolve().parents[1]


def _examples(*path: str) -> list[str]:
    """The ``corpus ...`` example lines of the help of ``corpus PATH``."""
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="corpus", terminal_width=200)
    assert result.exit_code == 0, result.output
    return [ln.strip() for ln in result.output.splitlines() if ln.strip().startswith("corpus ")]


def _argv(line: str) -> list[str]:
    return shlex.split(line.split("&&")[0])[1:]


@pytest.fixture
def shipped_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cwd holding copies of the shipped taxonomy/ and templates/ (no corpus.toml)."""
    shutil.copytree(ROOT / "taxonomy", tmp_path / "taxonomy")
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_templates_render_examples_run_verbatim(shipped_copy: Path) -> None:
    from builder.templates import SAMPLE_EXERCISES

    sample = next(iter(SAMPLE_EXERCISES.values()))
    (shipped_copy / "ex.json").write_text(json.dumps(sample), encoding="utf-8")
    lines = {
        ln
        for p in (("templates",), ("templates", "render"))
        for ln in _examples(*p)
        if ln.startswith("corpus templates render ")
    }
    assert len(lines) >= 2
    for line in sorted(lines):
        result = CliRunner().invoke(cli, _argv(line), prog_name="corpus")
        assert result.exit_code == 0, f"{line}: {result.output} {result.exception!r}"
        assert json.loads(result.output)["messages"], line


def test_taxonomy_edit_examples_run_verbatim(shipped_copy: Path) -> None:
    """show/add/move/rename/remove examples work as printed (edits with --dry-run)."""
    from builder.taxonomy import load_taxonomy

    tax = load_taxonomy(ROOT / "taxonomy")
    ran = 0
    for sub in ("show", "add", "move", "rename", "remove"):
        group_lines = [
            ln for ln in _examples("taxonomy") if ln.startswith(f"corpus taxonomy {sub} ")
        ]
        for line in _examples("taxonomy", sub) + group_lines:
            argv = _argv(line)
            if sub == "add":
                new_id = argv[argv.index("--id") + 1]
                assert new_id not in tax, f"{line}: '{new_id}' exists already in taxonomy/"
            elif len(argv) > 2:
                assert argv[2] in tax, f"{line}: '{argv[2]}' is not in the shipped taxonomy"
            if sub != "show":
                argv.append("--dry-run")
            result = CliRunner().invoke(cli, argv, prog_name="corpus")
            assert result.exit_code == 0, f"{line}: {result.output} {result.exception!r}"
            ran += 1
    assert ran >= 7


def test_growth_examples_name_proposed_not_existing_ids() -> None:
    """approve/reject examples name ids an expansion would propose, not approved nodes."""
    from builder.taxonomy import load_taxonomy

    tax = load_taxonomy(ROOT / "taxonomy")
    checked = 0
    for sub in ("review", "approve", "reject"):
        for line in _examples("taxonomy", sub):
            for part in line.split("&&"):
                argv = shlex.split(part)
                if argv[2] not in ("approve", "reject"):
                    continue
                ids = [a for a in argv[3:] if not a.startswith("-")]
                if "--under" in argv:
                    assert argv[argv.index("--under") + 1] in tax, line
                    continue
                for node_id in ids:
                    assert node_id not in tax, f"{line}: '{node_id}' is an approved node"
                    checked += 1
    assert checked >= 3
