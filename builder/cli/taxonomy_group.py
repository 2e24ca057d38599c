"""``corpus taxonomy ...``: the curator's commands, split over two modules."""

from __future__ import annotations

import click

from builder.cli import LazyGroup

SUBCOMMANDS = {
    name: f"builder.cli.taxonomy:{name}_cmd"
    for name in (
        "validate",
        "show",
        "stats",
        "add",
        "move",
        "rename",
        "remove",
        "prereq",
        "import",
        "export",
    )
} | {name: f"builder.cli.growth:{name}_cmd" for name in ("expand", "review", "approve", "reject")}


@click.group(cls=LazyGroup, lazy_subcommands=SUBCOMMANDS)
def taxonomy() -> None:
    """Inspect and edit the discipline taxonomy (comments and ordering are kept).

    \b
    Example:
      corpus taxonomy validate
      corpus taxonomy add mathematics --id topology --name Topology
    """
