"""Every ``corpus`` command and subcommand has ``--help`` text with an example (docs that
cannot rot: the help is the command's docstring)."""

from __future__ import annotations

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
