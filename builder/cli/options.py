"""Option decorators shared by several commands."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

import click

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Path to corpus.toml (default: ./corpus.toml if present).",
)

taxonomy_option = click.option(
    "--taxonomy",
    "taxonomy_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Taxonomy directory (default: the config's [taxonomy] dir, else taxonomy/).",
)

cache_dir_option = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="LLM cache directory (else CORPUS_CACHE_DIR, else [llm] cache_dir, else .corpus-cache/).",
)

max_cost_option = click.option(
    "--max-cost",
    type=click.FloatRange(min=0),
    default=None,
    help="Stop launching requests before the running cost would pass this many USD.",
)

executor_option = click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default=None,
    help="Who maps the partitioned stages: local, or ray (Ray tasks; the run directory must "
    "be on a filesystem every node sees). Else CORPUS_EXECUTOR, else [run] executor.",
)

ray_address_option = click.option(
    "--ray-address",
    default=None,
    metavar="ADDR",
    help="Ray head node HOST:PORT, or auto (an existing cluster, else a local one; the "
    "default). Else CORPUS_RAY_ADDRESS, else [run] ray_address.",
)


def executor_overrides(executor: str | None, ray_address: str | None) -> dict[str, str | None]:
    """Config overrides for ``--executor`` and ``--ray-address`` (None: not given)."""
    return {"run.executor": executor, "run.ray_address": ray_address}


def flag_path(value: str | None) -> str | None:
    """A path flag made absolute against the current directory.

    Config-file paths resolve against the config's folder (``cfg.path``); a flag the user
    typed must resolve against where they typed it, so it is made absolute before it
    overrides the config value.
    """
    return str(Path(value).resolve()) if value else None


def echo_lines(lines: Iterable[str], *, nl: bool = True) -> None:
    """Print lines to stdout; stop quietly (exit 0) when the reader closes the pipe.

    ``corpus walk | head -1`` closes stdout early: the remaining output is unwanted, not an
    error, so stdout is pointed at os.devnull (so Python's exit-time flush cannot fail again)
    and the command returns normally.
    """
    try:
        for line in lines:
            click.echo(line, nl=nl)
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
