"""``corpus walk``: print the walker's generation units as JSON lines (or its coverage)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from builder.cli.options import config_option, echo_lines, taxonomy_option


@click.command()
@config_option
@taxonomy_option
@click.option("--seed", type=int, default=None, help="Walk seed (default: [walk] seed, 0).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Stop after K units.")
@click.option(
    "--token-budget",
    type=click.IntRange(min=1),
    default=None,
    help="Stop before the estimated tokens (units x --tokens-per-unit) pass this.",
)
@click.option(
    "--tokens-per-unit",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Estimated tokens one unit costs (default: [walk] tokens_per_unit).",
)
@click.option(
    "--rounds",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after R rounds (1: every topic/session once). Default with no bound: 1.",
)
@click.option(
    "--subtree",
    multiple=True,
    metavar="ID",
    help="Only walk under this node (repeatable).",
)
@click.option("--level", default=None, help="Walk the nodes of this level instead of leaves.")
@click.option(
    "--order",
    type=click.Choice(["random", "curriculum"]),
    default=None,
    help="Order inside a round: weighted random, or prerequisites first.",
)
@click.option(
    "--include-proposed",
    is_flag=True,
    help="Also walk proposed nodes and use proposed syllabi.",
)
@click.option("--no-syllabi", is_flag=True, help="Ignore syllabi: walk topic leaves only.")
@click.option("--coverage", "show_coverage", is_flag=True, help="Print units per node instead.")
@click.option("--json", "as_json", is_flag=True, help="With --coverage: print it as JSON.")
def walk(
    config_path: str | None,
    taxonomy_dir: str | None,
    seed: int | None,
    limit: int | None,
    token_budget: int | None,
    tokens_per_unit: float | None,
    rounds: int | None,
    subtree: tuple[str, ...],
    level: str | None,
    order: str | None,
    include_proposed: bool,
    no_syllabi: bool,
    show_coverage: bool,
    as_json: bool,
) -> None:
    """Print generation units, one JSON object per line (seeded, weighted, stratified).

    Each unit names a discipline, subject and topic (taxonomy ids), its taxonomy_path, the
    key concepts to write about and a difficulty. Subjects with an approved syllabus yield
    GLAN units (1-2 sessions, 1-5 key concepts); other subjects yield their topic leaves.
    Every topic or session is covered once before any repeats. Flags override the [walk]
    section of corpus.toml; with no --limit/--token-budget/--rounds anywhere, one round.

    \b
    Example:
      corpus walk --seed 1 --limit 20
      corpus walk --subtree mathematics --order curriculum
      corpus walk --rounds 3 --coverage
    """
    from builder.config import load_config
    from builder.run.inputs import open_walk
    from builder.taxonomy import load_taxonomy

    flags = {
        "seed": seed,
        "limit": limit,
        "token_budget": token_budget,
        "tokens_per_unit": tokens_per_unit,
        "rounds": rounds,
        "subtree": list(subtree) or None,
        "level": level,
        "order": order,
        "include_proposed": True if include_proposed else None,
        "use_syllabi": False if no_syllabi else None,
    }
    # Flags override corpus.toml (one precedence: flag > env > corpus.toml > default).
    overrides = {f"walk.{k}": v for k, v in flags.items()}
    overrides["taxonomy.dir"] = str(Path(taxonomy_dir).resolve()) if taxonomy_dir else None
    cfg = load_config(config_path, overrides)
    tax = load_taxonomy(cfg.path(cfg.taxonomy.dir), levels=cfg.taxonomy.levels)
    # The one rule of which units a config walks (builder.run.inputs.open_walk): exactly the
    # units `corpus build --config` walks with the same flags set in its [walk] section.
    walker = open_walk(tax, cfg)
    if walker.ignored_syllabi:
        ignored = walker.ignored_syllabi
        shown = ", ".join(ignored[:5]) + (
            f" and {len(ignored) - 5} more" if len(ignored) > 5 else ""
        )
        click.echo(
            f"note: proposed syllabi not used: {shown} (approve them with "
            "`corpus syllabus approve ID`, or pass --include-proposed)",
            err=True,
        )
    if show_coverage:
        for _ in walker:
            pass
        cov = walker.coverage()
        if as_json:
            click.echo(json.dumps({**cov.to_dict(), "rows": cov.rows(tax)}, ensure_ascii=False))
        else:
            click.echo(cov.table(tax), nl=False)
        return
    echo_lines(json.dumps(unit.to_dict(), ensure_ascii=False) for unit in walker)
