"""``corpus generate``: walker units x templates -> LLM -> raw rows -> filters + verification."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from builder.cli.options import cache_dir_option, config_option, max_cost_option, taxonomy_option

if TYPE_CHECKING:  # pragma: no cover
    from builder.config import CorpusConfig
    from builder.records import Unit
    from builder.taxonomy import Taxonomy


def walk_units(
    cfg: CorpusConfig, *, subtree: list[str] | None = None, tax: Taxonomy | None = None
) -> Iterator[Unit]:
    """The units of the config's walk ([walk] and [taxonomy] sections).

    Like ``corpus walk``: with none of limit, token_budget or rounds set, one round (every
    selected topic or session once), so that generation always ends.
    """
    from builder.pipeline import walk_units as build_walk_units
    from builder.taxonomy import load_taxonomy

    if tax is None:
        tax = load_taxonomy(cfg.path(cfg.taxonomy.dir))
    if subtree is not None:
        cfg = cfg.model_copy(update={"walk": cfg.walk.model_copy(update={"subtree": subtree})})
    # The same walk as `corpus build` (statuses, syllabi and bounds), so both make the same units.
    _walk, units = build_walk_units(tax, cfg)
    yield from units


def find_unit(
    cfg: CorpusConfig, *, unit_id: str | None = None, topic_id: str | None = None
) -> Unit:
    """A unit of the config's walk by id, or the first unit the walker makes for a node.

    An unknown ``topic_id`` is reported as the --topic flag's mistake (with the closest
    taxonomy ids), not as a bad ``[walk] subtree`` in the config.
    """
    import difflib

    from builder.errors import InputError
    from builder.taxonomy import load_taxonomy

    if unit_id is not None:
        for unit in walk_units(cfg):
            if unit.unit_id == unit_id:
                return unit
        raise InputError(
            f"unit '{unit_id}' is not in this config's walk",
            hint="`corpus walk --config ...` lists the unit ids; or use --topic ID",
        )
    if topic_id is None:
        raise InputError("give --unit UNIT_ID or --topic ID")
    tax = load_taxonomy(cfg.path(cfg.taxonomy.dir))
    if topic_id not in tax:
        ids = [node.id for node in tax]
        close = difflib.get_close_matches(topic_id, ids, n=3)
        hint = (
            f"did you mean {', '.join(close)}?" if close else "`corpus taxonomy show` lists the ids"
        )
        raise InputError(f"--topic {topic_id}: unknown taxonomy id", hint=hint)
    for unit in walk_units(cfg, subtree=[topic_id], tax=tax):
        if topic_id in (unit.topic, unit.subject, unit.discipline) or topic_id in (
            unit.taxonomy_path.split("/")
        ):
            return unit
    raise InputError(
        f"the walker makes no unit for node '{topic_id}'",
        hint="check the id with `corpus taxonomy show`, and that the node is approved",
    )


@click.command()
@config_option
@taxonomy_option
@cache_dir_option
@max_cost_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Raw rows JSONL (default: <output dir>/<run>/generate/generated.jsonl).",
)
@click.option(
    "--templates",
    "templates_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Templates directory (default: the config's [generate] templates_dir).",
)
@click.option("--no-filter", is_flag=True, help="Only generate; skip filters and verification.")
def generate(
    config_path: str | None,
    taxonomy_dir: str | None,
    cache_dir: str | None,
    max_cost: float | None,
    out: str | None,
    templates_dir: str | None,
    no_filter: bool,
) -> None:
    """Generate documents for the config's walk; resumes where the last run stopped.

    Walker units x templates -> requests with stable ids -> the LLM -> one JSON row per
    result appended to --out (documents and failures alike). Then filters and verification
    split the rows into <out>.kept.jsonl and <out>.rejected.jsonl (every rejected row has a
    stage and a reason). Rerunning sends only what is not finished yet.

    \b
    Example:
      corpus generate --config corpus.toml --max-cost 2
      corpus generate --config corpus.toml --out run/generated.jsonl --no-filter
    """
    from builder.cli.templates import flag_path, load_template_set
    from builder.config import load_config
    from builder.errors import BudgetExceeded
    from builder.filters import filter_documents, rejection_counts
    from builder.generate import GenerateStats, iter_generated, write_jsonl
    from builder.generate import generate as run_generate
    from builder.llm import open_engine, resolve_cache_dir

    cfg = load_config(
        config_path,
        {
            "taxonomy.dir": flag_path(taxonomy_dir),
            "generate.templates_dir": flag_path(templates_dir),
        },
    )
    tset = load_template_set(cfg.path(cfg.generate.templates_dir))
    units = list(walk_units(cfg))
    out_path = (
        Path(out)
        if out
        else cfg.path(cfg.output.dir) / cfg.output.run / "generate" / "generated.jsonl"
    )
    cache = resolve_cache_dir(cache_dir, cfg.llm, root=cfg.root)
    stats = GenerateStats()
    summary: dict = {"units": len(units), "out": str(out_path)}
    with open_engine(cfg.llm, cache_dir=cache) as llm:
        try:
            run_generate(units, tset, llm, cfg.generate, out_path, max_cost=max_cost, stats=stats)
        except BudgetExceeded:
            click.echo(json.dumps({**summary, "generate": stats.to_dict()}), err=True)
            raise
        summary["generate"] = stats.to_dict()
        if not no_filter:
            rows = list(iter_generated(out_path, stats.request_ids))
            kept, rejected = filter_documents(rows, cfg.filters, cfg.verify, llm=llm)
            kept_path = out_path.with_name(out_path.stem + ".kept.jsonl")
            rejected_path = out_path.with_name(out_path.stem + ".rejected.jsonl")
            write_jsonl(kept_path, kept)
            write_jsonl(rejected_path, rejected)
            summary["kept"] = len(kept)
            summary["verified"] = sum(1 for d in kept if d.get("verified") is True)
            summary["rejected"] = rejection_counts(rejected)
            summary["kept_path"] = str(kept_path)
            summary["rejected_path"] = str(rejected_path)
    click.echo(json.dumps(summary, indent=2))
