"""``corpus generate|filter|assemble`` and the ``--run`` forms of ``corpus dedup|decontam|
report``: one stage of a run directory, with the same code ``corpus build`` runs.

Each command runs its stage over ``<output.dir>/<run>/`` (``--run`` takes a run name, or a
run directory path) and leaves exactly the files the build leaves; a stage that is up to
date is skipped, as in a build. ``generate`` also runs the syllabi and walk stages (they
make the units it generates from).
"""

from __future__ import annotations

import json
from typing import Any

import click

from builder.cli.options import (
    cache_dir_option,
    config_option,
    executor_option,
    executor_overrides,
    flag_path,
    max_cost_option,
    ray_address_option,
)


def _log(message: str) -> None:
    click.echo(message, err=True)


def run_option(f: Any) -> Any:
    return click.option(
        "--run",
        "run_name",
        default=None,
        help="Run name (default: [output] run) or a run directory path.",
    )(f)


def run_named_stages(
    names: list[str],
    config_path: str | None,
    run_name: str | None,
    *,
    overrides: dict[str, Any] | None = None,
    max_cost: float | None = None,
    cache_dir: str | None = None,
    no_progress: bool = True,
) -> dict[str, Any]:
    """Run the named stages of a run directory; return the run dir and their counters."""
    from builder.config import load_config
    from builder.run.build import run_named

    cfg = load_config(config_path, overrides)
    summary = run_named(
        cfg,
        names,
        run_name,
        max_cost=max_cost,
        cache_dir=cache_dir,
        progress=False if no_progress else None,
        log=_log,
    )
    return {"run_dir": str(summary.run_dir), "counters": summary.counters}


@click.command()
@config_option
@run_option
@click.option(
    "--taxonomy",
    "taxonomy_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Taxonomy directory (default: the config's [taxonomy] dir).",
)
@click.option(
    "--templates",
    "templates_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Templates directory (default: the config's [generate] templates_dir).",
)
@cache_dir_option
@max_cost_option
@click.option("--progress", "show_progress", is_flag=True, help="Show a progress bar.")
@executor_option
@ray_address_option
def generate(
    config_path: str | None,
    run_name: str | None,
    taxonomy_dir: str | None,
    templates_dir: str | None,
    cache_dir: str | None,
    max_cost: float | None,
    show_progress: bool,
    executor: str | None,
    ray_address: str | None,
) -> None:
    """Generate the documents of the config's walk into the run directory; resumable.

    Runs the build's syllabi, walk and generate stages: walker units x templates ->
    requests with stable ids -> the LLM -> one row per result (documents and failures
    alike) in <run>/work/generate/part-*.parquet. Rerunning sends only what is not finished
    yet. `corpus filter` then filters and verifies them, as `corpus build` does.

    \b
    Example:
      corpus generate --config corpus.toml --max-cost 2
      corpus generate --config corpus.toml --run v1
    """
    result = run_named_stages(
        ["syllabi", "walk", "generate"],
        config_path,
        run_name,
        overrides={
            "taxonomy.dir": flag_path(taxonomy_dir),
            "generate.templates_dir": flag_path(templates_dir),
            **executor_overrides(executor, ray_address),
        },
        max_cost=max_cost,
        cache_dir=cache_dir,
        no_progress=not show_progress,
    )
    counters = result["counters"]
    click.echo(
        json.dumps(
            {
                "run_dir": result["run_dir"],
                "units": (counters.get("walk") or {}).get("units", 0),
                "generate": counters.get("generate") or {},
            },
            indent=2,
        )
    )


def _one_stage_command(name: str, doc: str) -> click.Command:
    @click.command(name, help=doc)
    @config_option
    @run_option
    @cache_dir_option
    @executor_option
    @ray_address_option
    def command(
        config_path: str | None,
        run_name: str | None,
        cache_dir: str | None,
        executor: str | None,
        ray_address: str | None,
    ) -> None:
        result = run_named_stages(
            [name],
            config_path,
            run_name,
            cache_dir=cache_dir,
            overrides=executor_overrides(executor, ray_address),
        )
        click.echo(json.dumps({"run_dir": result["run_dir"], **result["counters"]}, indent=2))

    return command


filter_stage = _one_stage_command(
    "filter",
    """Filter and verify the run's generated documents (the build's filter stage).

    Reads <run>/work/generate/ and writes <run>/work/filter/kept/ and rejected/ (every
    rejected row has a stage and a reason). Skipped when up to date.

    \b
    Example:
      corpus filter --config corpus.toml
      corpus filter --run outputs/v1
    """,
)

assemble_stage = _one_stage_command(
    "assemble",
    """Assemble the run's corpus: shards, rejected.parquet, manifest.json and the card.

    Reads the decontaminated documents and every stage's rejections from <run>/work/
    (the build's assemble stage). Skipped when up to date.

    \b
    Example:
      corpus assemble --config corpus.toml
      corpus assemble --run outputs/v1
    """,
)

quality_stage = _one_stage_command(
    "quality",
    """Run the quality gates over the run's filtered documents (the build's quality stage).

    Checks Python code inside prose (`code_ok`), scores each document's relevance to its
    unit (offline embeddings or an [embeddings] endpoint; [filters] min_relevance drops
    off-topic ones) and, with [judge] enabled, grades its educational value (`edu_score`).
    Reads <run>/work/filter/kept/ and writes <run>/work/quality/. Skipped when up to date.

    \b
    Example:
      corpus quality --config corpus.toml
      corpus quality --run outputs/v1
    """,
)

semdedup_stage = _one_stage_command(
    "semdedup",
    """Find semantic near-duplicates among MinHash's survivors (the build's semdedup stage).

    Clusters the quality stage's embeddings and compares documents within clusters; they
    are reported per taxonomy node, and removed when [dedup] semantic = true. Reads
    <run>/work/dedup/ and writes <run>/work/semdedup/. Skipped when up to date.

    \b
    Example:
      corpus semdedup --config corpus.toml
      corpus semdedup --run outputs/v1
    """,
)
