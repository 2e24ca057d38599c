"""``corpus taxonomy validate|show|stats|add|move|rename|remove|import|export``.

Each command parses its options and calls ``builder.taxonomy``; errors are ``BuilderError``s
that ``corpus`` prints as ``file:line: message (fix)`` with exit code 2.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from builder.cli.options import config_option, echo_lines, taxonomy_option
from builder.errors import Problem, ValidationError

__all__ = [
    "add_cmd",
    "export_cmd",
    "import_cmd",
    "move_cmd",
    "prereq_cmd",
    "remove_cmd",
    "rename_cmd",
    "resolve_taxonomy_dir",
    "show_cmd",
    "stats_cmd",
    "validate_cmd",
]


def resolve_taxonomy_dir(taxonomy_dir: str | None, config_path: str | None = None) -> Path:
    """The taxonomy directory: the --taxonomy flag, else CORPUS_TAXONOMY_DIR, else the
    config's ``[taxonomy] dir`` (relative to the config file), else ``taxonomy``.

    ``config_path`` None means ./corpus.toml if it exists.
    """
    if taxonomy_dir:
        return Path(taxonomy_dir)
    env = os.environ.get("CORPUS_TAXONOMY_DIR")
    if env:
        return Path(env)
    from builder.config import load_config

    cfg = load_config(config_path)
    if cfg.source is None:
        return Path(cfg.taxonomy.dir)
    path = cfg.path(cfg.taxonomy.dir)
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


def _levels_setting(config_path: str | None) -> list[str]:
    from builder.config import load_config

    return list(load_config(config_path).taxonomy.levels)


def _validate_syllabi(tax, config_path: str | None = None) -> tuple[list[Problem], str]:
    """Syllabus problems, judged against the config's [syllabus] bounds, and a summary such
    as ``3 syllabi (1 approved, 2 proposed)``."""
    from builder.config import load_config
    from builder.syllabus import load_syllabi, validate_syllabi

    settings = load_config(config_path).syllabus
    problems = list(validate_syllabi(tax, settings))
    if problems:
        return problems, ""
    loaded = load_syllabi(tax, None, settings)
    approved = sum(1 for s in loaded.values() if s.status == "approved")
    noun = "syllabus" if len(loaded) == 1 else "syllabi"
    summary = f"{len(loaded)} {noun} ({approved} approved, {len(loaded) - approved} proposed)"
    return [], summary


@click.command("validate")
@taxonomy_option
@config_option
def validate_cmd(taxonomy_dir: str | None, config_path: str | None) -> None:
    """Check the taxonomy and its syllabi; list every problem as file:line (exit code 2).

    Checks YAML syntax (reported first), unknown keys and wrong types, id slugs, empty
    names, level names ([taxonomy] levels; a typo gets a did-you-mean), status values,
    duplicate ids across files, dangling prerequisites, prerequisites on one's own ancestor
    or descendant, and prerequisite cycles (every edge named with its file:line). Levels
    that do not fit their depth are printed as warnings (exit code 0).

    \b
    Example:
      corpus taxonomy validate
      corpus taxonomy validate --taxonomy examples/taxonomy
    """
    from builder.taxonomy import check_taxonomy

    root = resolve_taxonomy_dir(taxonomy_dir, config_path)
    problems, tax = check_taxonomy(root, levels=_levels_setting(config_path))
    syllabi = ""
    if tax is not None:
        problems, syllabi = _validate_syllabi(tax, config_path)
    if problems:
        raise ValidationError(
            [
                *problems,
                Problem(
                    f"{len(problems)} problem(s) in {root}; fix them and run "
                    "`corpus taxonomy validate` again"
                ),
            ]
        )
    for warning in tax.warnings:
        click.echo(f"warning: {warning}", err=True)
    s = tax.stats()
    click.echo(
        f"ok: {root}: {s['disciplines']} discipline(s), {s['nodes']} nodes "
        f"({s['proposed']} proposed), {s['leaves']} leaves, depth {s['depth']}, {syllabi}"
    )


def _load(taxonomy_dir: str | None, config_path: str | None):
    from builder.taxonomy import load_taxonomy

    return load_taxonomy(
        resolve_taxonomy_dir(taxonomy_dir, config_path), levels=_levels_setting(config_path)
    )


@click.command("show")
@click.argument("node_id", required=False, metavar="[ID]")
@click.option(
    "--depth",
    type=click.IntRange(min=0),
    default=None,
    help="Levels to show below the start (0: the node only). Default: all.",
)
@taxonomy_option
@config_option
def show_cmd(
    node_id: str | None, depth: int | None, taxonomy_dir: str | None, config_path: str | None
) -> None:
    """Print the taxonomy (or the subtree under ID) as an indented tree.

    Each line: id, name, [level], (proposed) for unapproved nodes, and the prerequisites.
    Hidden children are counted as (+N below).

    \b
    Example:
      corpus taxonomy show
      corpus taxonomy show calculus --depth 1
    """
    tax = _load(taxonomy_dir, config_path)
    starts = [tax[node_id]] if node_id else tax.roots()
    lines: list[str] = []
    for start in starts:
        base = start.depth
        for node in tax.subtree(start):
            rel = node.depth - base
            if depth is not None and rel > depth:
                continue
            parts = [f"{'  ' * rel}{node.id}", node.name]
            if node.level:
                parts.append(f"[{node.level}]")
            if node.status != "approved":
                parts.append(f"({node.status})")
            if node.prerequisites:
                parts.append("requires: " + ", ".join(node.prerequisites))
            if depth is not None and rel == depth and node.children:
                parts.append(f"(+{len(tax.subtree(node)) - 1} below)")
            lines.append("  ".join(parts))
    echo_lines(lines)


@click.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@taxonomy_option
@config_option
def stats_cmd(as_json: bool, taxonomy_dir: str | None, config_path: str | None) -> None:
    """Count nodes per level, leaves, depth, disciplines, approved vs proposed.

    --json prints one object with nodes, leaves, depth, disciplines, files, approved,
    proposed, prerequisite_edges, per_level (level -> count), per_depth and per_discipline.

    \b
    Example:
      corpus taxonomy stats
      corpus taxonomy stats --json | jq .per_level
    """
    tax = _load(taxonomy_dir, config_path)
    s = tax.stats()
    if as_json:
        click.echo(json.dumps(s, ensure_ascii=False))
        return
    click.echo(
        f"{tax.root}: {s['disciplines']} discipline(s) in {s['files']} file(s), "
        f"{s['nodes']} nodes ({s['approved']} approved, {s['proposed']} proposed), "
        f"{s['leaves']} leaves, depth {s['depth']}, {s['prerequisite_edges']} prerequisite(s)"
    )
    click.echo("per level:")
    width = max((len(k) for k in s["per_level"]), default=0)
    for level, count in s["per_level"].items():
        click.echo(f"  {level:<{width}}  {count:>7}")
    click.echo("per discipline:")
    width = max((len(k) for k in s["per_discipline"]), default=0)
    for disc, count in s["per_discipline"].items():
        click.echo(f"  {disc:<{width}}  {count:>7}")


# -- edits ----------------------------------------------------------------------------------

dry_run_option = click.option(
    "--dry-run", is_flag=True, help="Validate and print the diff; write nothing."
)


def _finish(editor, dry_run: bool) -> None:
    """Validate, then write (or show the diff); report what changed."""
    if dry_run:
        problems, _ = editor.check()
        if problems:
            raise ValidationError([Problem("the edit would make the taxonomy invalid"), *problems])
        click.echo(editor.diff(), nl=False)
        for change in editor.changes:
            click.echo(f"would: {change}", err=True)
        return
    editor.save()
    for change in editor.changes:
        click.echo(change)


def _editor(taxonomy_dir: str | None, config_path: str | None):
    from builder.taxonomy import TaxonomyEditor

    root = resolve_taxonomy_dir(taxonomy_dir, config_path)
    return TaxonomyEditor(root, levels=_levels_setting(config_path))


@click.command("add")
@click.argument("parent")
@click.option("--id", "node_id", default=None, help="Slug id (default: the slug of --name).")
@click.option("--name", required=True, help="Human-readable name.")
@click.option("--description", default=None, help="One or two sentences on what it covers.")
@click.option("--level", default=None, help="Level name (default: the siblings' level).")
@click.option(
    "--weight",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Share of generation relative to siblings (default 1).",
)
@click.option(
    "--prerequisite",
    "-p",
    "prerequisites",
    multiple=True,
    help="Id of a prerequisite (repeatable).",
)
@click.option(
    "--status", type=click.Choice(["approved", "proposed"]), default="approved", show_default=True
)
@dry_run_option
@taxonomy_option
@config_option
def add_cmd(
    parent: str,
    node_id: str | None,
    name: str,
    description: str | None,
    level: str | None,
    weight: float | None,
    prerequisites: tuple[str, ...],
    status: str,
    dry_run: bool,
    taxonomy_dir: str | None,
    config_path: str | None,
) -> None:
    """Add a node under PARENT (it goes into PARENT's file). PARENT '-' adds a new
    discipline in its own file, taxonomy/<id>.yaml.

    Comments and formatting of the file are kept; the edit is refused (nothing written) if
    the taxonomy would become invalid.

    \b
    Example:
      corpus taxonomy add calculus --id calculus-parametric-curves --name "Parametric curves"
      corpus taxonomy add - --id astronomy --name Astronomy --level discipline
    """
    from builder.taxonomy import slugify

    editor = _editor(taxonomy_dir, config_path)
    editor.add_node(
        None if parent == "-" else parent,
        node_id or slugify(name),
        name,
        description=description,
        level=level,
        status=status,
        weight=weight,
        prerequisites=prerequisites,
    )
    _finish(editor, dry_run)


@click.command("move")
@click.argument("node_id", metavar="ID")
@click.option("--to", "to", required=True, help="New parent id ('-': a discipline of its own).")
@dry_run_option
@taxonomy_option
@config_option
def move_cmd(
    node_id: str, to: str, dry_run: bool, taxonomy_dir: str | None, config_path: str | None
) -> None:
    """Move ID and its subtree under a new parent, possibly in another discipline's file.

    \b
    Example:
      corpus taxonomy move probability --to mathematics
    """
    editor = _editor(taxonomy_dir, config_path)
    editor.move_node(node_id, None if to == "-" else to)
    _finish(editor, dry_run)


@click.command("rename")
@click.argument("node_id", metavar="ID")
@click.option("--name", required=True, help="The new human-readable name (the id stays).")
@dry_run_option
@taxonomy_option
@config_option
def rename_cmd(
    node_id: str, name: str, dry_run: bool, taxonomy_dir: str | None, config_path: str | None
) -> None:
    """Change the name of ID (its id, which everything refers to, does not change).

    \b
    Example:
      corpus taxonomy rename calculus-limits-and-continuity --name "Limits"
    """
    editor = _editor(taxonomy_dir, config_path)
    editor.rename_node(node_id, name)
    _finish(editor, dry_run)


@click.command("remove")
@click.argument("node_id", metavar="ID")
@click.option(
    "--cascade",
    is_flag=True,
    help="Also remove its subtree and drop it from other nodes' prerequisites.",
)
@dry_run_option
@taxonomy_option
@config_option
def remove_cmd(
    node_id: str, cascade: bool, dry_run: bool, taxonomy_dir: str | None, config_path: str | None
) -> None:
    """Remove ID. Without --cascade this is refused if ID has children or is a prerequisite
    of other nodes (they are named).

    \b
    Example:
      corpus taxonomy remove calculus-infinite-series
      corpus taxonomy remove calculus --cascade
    """
    editor = _editor(taxonomy_dir, config_path)
    editor.remove_node(node_id, cascade=cascade)
    _finish(editor, dry_run)


@click.group("prereq")
def prereq_cmd() -> None:
    """Add or remove prerequisites of an existing node (comments and layout are kept).

    The edit is validated first (unknown ids, cycles, prerequisites on one's own ancestor or
    descendant are refused with nothing written); --dry-run prints the diff.

    \b
    Example:
      corpus taxonomy prereq add calculus-integrals calculus-limits
      corpus taxonomy prereq remove calculus-integrals calculus-limits --dry-run
    """


def _prereq_command(name: str, method: str, doc: str) -> click.Command:
    """``prereq add`` / ``prereq remove``: one body, calling ``TaxonomyEditor.<method>``."""

    def command(
        node_id: str,
        prerequisites: tuple[str, ...],
        dry_run: bool,
        taxonomy_dir: str | None,
        config_path: str | None,
    ) -> None:
        editor = _editor(taxonomy_dir, config_path)
        getattr(editor, method)(node_id, prerequisites)
        _finish(editor, dry_run)

    command.__doc__ = doc
    command.__name__ = f"prereq_{name}_cmd"
    for decorate in (
        config_option,
        taxonomy_option,
        dry_run_option,
        click.argument("prerequisites", nargs=-1, required=True, metavar="PREREQ..."),
        click.argument("node_id", metavar="ID"),
    ):
        command = decorate(command)
    return prereq_cmd.command(name)(command)


prereq_add_cmd = _prereq_command(
    "add",
    "add_prerequisites",
    """Make ID require each PREREQ (appended to its prerequisites list).

    \b
    Example:
      corpus taxonomy prereq add calculus-integrals calculus-limits
    """,
)
prereq_remove_cmd = _prereq_command(
    "remove",
    "remove_prerequisites",
    """Drop each PREREQ from ID's prerequisites.

    \b
    Example:
      corpus taxonomy prereq remove calculus-integrals calculus-limits
    """,
)


# -- import / export ------------------------------------------------------------------------


@click.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--levels",
    default=None,
    help="Comma-separated level names, top first; for a CSV these are the level "
    "columns (default: every column but description/weight).",
)
@click.option(
    "--into",
    "into",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory to write into (default: the taxonomy directory).",
)
@click.option("--force", is_flag=True, help="Overwrite discipline files that already exist.")
@dry_run_option
@taxonomy_option
@config_option
def import_cmd(
    file: str,
    levels: str | None,
    into: str | None,
    force: bool,
    dry_run: bool,
    taxonomy_dir: str | None,
    config_path: str | None,
) -> None:
    """Import a CSV (one column per level, optional description/weight columns) or a nested
    JSON outline ({name, children: [...]}, or `export --format json` output) as one YAML
    file per top-level node. Ids are stable slugs of the names; nothing is written unless
    the result validates. Without --levels a JSON outline's levels are [taxonomy] levels
    when it is no deeper, else level1..levelN. --dry-run prints the files as a diff.

    \b
    Example:
      corpus taxonomy import subjects.csv --levels domain,field,subfield,topic --into taxonomy/
      corpus taxonomy import outline.json --levels discipline,subject,topic
    """
    from builder.taxonomy import import_taxonomy

    level_list = [lv.strip() for lv in levels.split(",") if lv.strip()] if levels else None
    target = Path(into) if into else resolve_taxonomy_dir(taxonomy_dir, config_path)
    result = import_taxonomy(
        file,
        target,
        levels=level_list,
        default_levels=_levels_setting(config_path),
        force=force,
        dry_run=dry_run,
    )
    if dry_run:
        click.echo(result.diff(), nl=False)
    verb = "would write" if dry_run else "wrote"
    counts = ", ".join(f"{n} {lv}" for lv, n in result.per_level.items())
    click.echo(
        f"{verb} {len(result.files)} file(s) in {target}: {result.nodes} nodes ({counts})",
        err=dry_run,
    )
    if result.unlisted_levels:
        names = ", ".join(repr(name) for name in result.unlisted_levels)
        click.echo(
            f"note: level name(s) {names} are close to [taxonomy] levels names, so `corpus "
            "taxonomy validate` takes them for typos: add them to [taxonomy] levels in corpus.toml",
            err=True,
        )
    if level_list is None and "level1" in result.per_level:
        click.echo(
            f"note: the outline is {len(result.per_level)} levels deep, more than [taxonomy] "
            "levels names: levels are named level1..levelN (name them with --levels)",
            err=True,
        )


@click.command("export")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "graphml", "mermaid", "dot"]),
    default="json",
    show_default=True,
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write to this file (atomically) instead of standard output.",
)
@click.option("--subtree", default=None, help="Export only the subtree under this id.")
@taxonomy_option
@config_option
def export_cmd(
    fmt: str,
    output: str | None,
    subtree: str | None,
    taxonomy_dir: str | None,
    config_path: str | None,
) -> None:
    """Export the taxonomy graph: json (networkx node-link, readable by
    networkx.node_link_graph and by `corpus taxonomy import`), graphml, mermaid or dot.

    \b
    Example:
      corpus taxonomy export --format json -o taxonomy.json
      corpus taxonomy export --format mermaid --subtree mathematics
    """
    from builder.taxonomy import export_taxonomy
    from builder.taxonomy.files import atomic_write_text

    tax = _load(taxonomy_dir, config_path)
    if subtree is not None:
        _ = tax[subtree]  # unknown ids are reported with suggestions
    text = export_taxonomy(tax, fmt, subtree)
    if output:
        atomic_write_text(output, text)
        click.echo(f"wrote {output} ({fmt})", err=True)
    else:
        echo_lines([text], nl=False)
