"""``corpus taxonomy expand|review|approve|reject``: grow the taxonomy under review."""

from __future__ import annotations

import json

import click

from builder.cli.options import cache_dir_option, config_option, taxonomy_option


def _context(taxonomy_dir: str | None, config_path: str | None):
    from builder.cli.taxonomy import resolve_taxonomy_dir
    from builder.config import load_config
    from builder.taxonomy import load_taxonomy

    cfg = load_config(config_path)
    tax = load_taxonomy(resolve_taxonomy_dir(taxonomy_dir, config_path), levels=cfg.taxonomy.levels)
    return cfg, tax


@click.command("expand")
@click.argument("node_id", metavar="ID")
@click.option("--count", type=click.IntRange(1, 50), default=8, help="Children to ask for.")
@click.option(
    "--sample",
    type=click.IntRange(min=0),
    default=0,
    help="Sample index: another number asks the model for different proposals.",
)
@click.option("--dry-run", is_flag=True, help="Show the proposals without writing them.")
@config_option
@taxonomy_option
@cache_dir_option
def expand_cmd(
    node_id: str,
    count: int,
    sample: int,
    dry_run: bool,
    config_path: str | None,
    taxonomy_dir: str | None,
    cache_dir: str | None,
) -> None:
    """Have the model propose children of a node (e.g. subjects of a discipline).

    New names are compared with every name in the taxonomy (normalised, and fuzzy at 90%)
    and with each other; duplicates are listed, not added. Malformed names (brackets,
    placeholders such as {subject}, stray punctuation such as math_20-35) are refused, and
    the last line says how many of those asked for are usable. The rest are inserted with
    `status: proposed` and a `# proposed by <model> on <date>` comment; builds ignore them
    until `corpus taxonomy approve`. Replies are cached: --sample N asks for new ones.

    \b
    Example:
      corpus taxonomy expand mathematics --count 8
      corpus taxonomy review
    """
    from builder.growth import expand_node
    from builder.llm import open_engine
    from builder.llm.engine import resolve_cache_dir

    cfg, tax = _context(taxonomy_dir, config_path)
    cache = resolve_cache_dir(cache_dir, cfg.llm, root=cfg.root)
    with open_engine(cfg.llm, cache_dir=cache) as llm:
        report = expand_node(
            tax,
            llm,
            node_id,
            count=count,
            temperature=cfg.syllabus.temperature,
            max_tokens=min(cfg.syllabus.max_tokens, 64 + 120 * count),
            sample=sample,
            dry_run=dry_run,
        )
    verb = "would add" if dry_run else "proposed"
    for p in report.proposals:
        if p.action == "added":
            click.echo(f"{verb} {p.id}: {p.name}")
        elif p.action == "refused":
            click.echo(f"refused {p.name!r}: {p.reason}")
        else:
            click.echo(f"duplicate {p.name!r} (of {p.duplicate_of}), skipped")
    click.echo(report.summary(), err=True)
    if report.added and not dry_run:
        click.echo(
            "next: `corpus taxonomy review`, then `corpus taxonomy approve|reject ID...`",
            err=True,
        )


@click.command("review")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@config_option
@taxonomy_option
def review_cmd(as_json: bool, config_path: str | None, taxonomy_dir: str | None) -> None:
    """List proposed nodes (file:line, id, parent, name) waiting for a curator.

    \b
    Example:
      corpus taxonomy review
      corpus taxonomy approve topology && corpus taxonomy reject numerology

    (topology, numerology: ids of proposed nodes, as `corpus taxonomy review` lists them
    after `corpus taxonomy expand mathematics`.)
    """
    from builder.growth import proposed_nodes

    _, tax = _context(taxonomy_dir, config_path)
    nodes = proposed_nodes(tax)
    for n in nodes:
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "id": n.id,
                        "name": n.name,
                        "description": n.description,
                        "parent": n.parent,
                        "path": tax.path_ids(n.id),
                        "file": str(n.file),
                        "line": n.line,
                    },
                    ensure_ascii=False,
                )
            )
        else:
            desc = f" - {n.description}" if n.description else ""
            click.echo(f"{n.location}: {n.id} (under {n.parent or '-'}) {n.name}{desc}")
    if not as_json:
        click.echo(f"{len(nodes)} proposed node(s)", err=True)


def _ids(tax, ids: tuple[str, ...], all_: bool, under: str | None) -> list[str]:
    from builder.growth import proposed_nodes

    if all_ or under:
        chosen = [
            n.id
            for n in proposed_nodes(tax)
            if under is None or n.id == under or tax.is_ancestor(under, n.id)
        ]
        return list(dict.fromkeys([*ids, *chosen]))
    if not ids:
        raise click.UsageError("give node ids, --all or --under ID")
    return list(ids)


@click.command("approve")
@click.argument("node_ids", nargs=-1, metavar="ID...")
@click.option("--all", "all_", is_flag=True, help="Approve every proposed node.")
@click.option("--under", metavar="ID", default=None, help="Approve proposed nodes under ID.")
@config_option
@taxonomy_option
def approve_cmd(
    node_ids: tuple[str, ...],
    all_: bool,
    under: str | None,
    config_path: str | None,
    taxonomy_dir: str | None,
) -> None:
    """Approve proposed nodes so that builds use them (comments are kept).

    \b
    Example:
      corpus taxonomy approve topology mathematical-logic
      corpus taxonomy approve --under mathematics

    (topology, mathematical-logic: ids of proposed nodes from `corpus taxonomy review`.)
    """
    from builder.growth import approve_nodes

    _, tax = _context(taxonomy_dir, config_path)
    ids = _ids(tax, node_ids, all_, under)
    if not ids:
        click.echo("nothing to approve", err=True)
        return
    messages, _ = approve_nodes(tax, ids)
    for m in messages:
        click.echo(m)


@click.command("reject")
@click.argument("node_ids", nargs=-1, metavar="ID...")
@click.option("--all", "all_", is_flag=True, help="Reject every proposed node.")
@click.option("--under", metavar="ID", default=None, help="Reject proposed nodes under ID.")
@config_option
@taxonomy_option
def reject_cmd(
    node_ids: tuple[str, ...],
    all_: bool,
    under: str | None,
    config_path: str | None,
    taxonomy_dir: str | None,
) -> None:
    """Remove proposed nodes (never approved ones: use `corpus taxonomy remove` for those).

    \b
    Example:
      corpus taxonomy reject numerology

    (numerology: the id of a proposed node from `corpus taxonomy review`.)
    """
    from builder.growth import reject_nodes

    _, tax = _context(taxonomy_dir, config_path)
    ids = _ids(tax, node_ids, all_, under)
    if not ids:
        click.echo("nothing to reject", err=True)
        return
    messages, _ = reject_nodes(tax, ids)
    for m in messages:
        click.echo(m)
