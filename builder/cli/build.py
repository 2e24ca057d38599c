"""``corpus plan``, ``corpus build`` and ``corpus report``: the whole pipeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from builder.cli.options import (
    cache_dir_option,
    config_option,
    executor_option,
    executor_overrides,
    max_cost_option,
    ray_address_option,
)


def _config(config_path: str | None, overrides: dict[str, Any] | None = None) -> Any:
    from builder.config import load_config

    return load_config(config_path, overrides)


def _log(message: str) -> None:
    click.echo(message, err=True)


def _money(x: float | None) -> str:
    return "?" if x is None else f"${x:,.4f}"


@click.command("plan")
@config_option
@click.option("--run", "run_name", default=None, help="Run whose finished work is counted.")
@cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def plan(
    config_path: str | None, run_name: str | None, cache_dir: str | None, as_json: bool
) -> None:
    """Dry run: requests, tokens and cost per discipline, before anything is spent.

    Nothing is sent to any model and no server is started. Requests the LLM cache already
    answers are counted as cached and cost nothing; costs come from the [llm] prices table
    (USD per 1M tokens; models without a price show "?"). Evolution and answer-check
    requests depend on exercises not generated yet: those are estimated as an upper bound.

    \b
    Example:
      corpus plan --config corpus.toml
      corpus plan --config examples/openai.toml --json
    """
    from builder.pipeline import plan as run_plan

    cfg = _config(config_path)
    summary = run_plan(cfg, run=run_name, cache_dir=cache_dir)
    data = summary.to_dict()
    for warning in summary.warnings:
        click.echo(warning, err=True)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    header = (
        f"{'discipline':<30} {'requests':>9} {'cached':>8} {'to send':>8} {'in tokens':>11} "
        f"{'out tokens':>11} {'cost':>11} {'max cost':>11}"
    )
    click.echo(f"model: {data['model']}   units: {data['units']}")
    click.echo(header)
    click.echo("-" * len(header))
    for r in [*data["per_discipline"], data["total"]]:
        if r["discipline"] == "TOTAL":
            click.echo("-" * len(header))
        click.echo(
            f"{r['discipline']:<30} {r['requests']:>9,} {r['cached']:>8,} {r['to_send']:>8,} "
            f"{r['input_tokens']:>11,} {r['output_tokens']:>11,} {_money(r['cost_usd']):>11} "
            f"{_money(r['max_cost_usd']):>11}"
        )
    click.echo(
        f"requests: {data['syllabus_requests']} syllabus, {data['generation_requests']} "
        f"generation, {data['transform_requests']} evolution, "
        f"{data['second_sample_requests']} answer check(s)"
    )
    if data["estimated_requests"]:
        click.echo(
            f"{data['estimated_requests']} of them depend on exercises not generated yet: "
            "counted as an upper bound"
        )
    click.echo(
        "out tokens assume [llm] expected_output_fraction of max_tokens; max cost assumes all of it"
    )
    missing = data["missing_syllabi"]
    if missing:
        names = ", ".join(missing[:8]) + (
            f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        )
        click.echo(
            f"missing syllabi: {names}: the build generates them first and then walks their "
            "sessions; until then these estimates walk the topics"
        )
    if data["unpriced_models"]:
        click.echo(
            f'no price for: {", ".join(data["unpriced_models"])} (add [llm.prices."MODEL"] '
            "input/output USD per 1M tokens to the config)"
        )


@click.command("build")
@config_option
@click.option(
    "--run", "run_name", default=None, help="Run name: outputs go to <output.dir>/<run>/."
)
@max_cost_option
@cache_dir_option
@click.option("--no-progress", is_flag=True, help="Log lines instead of a progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@executor_option
@ray_address_option
def build(
    config_path: str | None,
    run_name: str | None,
    max_cost: float | None,
    cache_dir: str | None,
    no_progress: bool,
    as_json: bool,
    executor: str | None,
    ray_address: str | None,
) -> None:
    """Build the corpus: syllabi, walk, generate, filter and verify, dedup, decontaminate,
    assemble; into <output.dir>/<run>/ with a dataset card and a report.

    Resumes by default: finished work and every cached LLM answer are reused, so rerunning
    after Ctrl-C, a crash or --max-cost sends only what is missing, and rerunning a finished
    build does nothing and says so. After editing a subject or a template, only the requests
    whose prompts changed are sent. Exit code 3 when --max-cost stops the build.

    \b
    With --executor ray, filtering and verification and dedup's MinHash signatures run as
    Ray tasks on a cluster (generation and the model stay here; the run directory must be
    on a filesystem every node sees); the corpus is the same byte for byte.

    \b
    Example:
      corpus build --config corpus.toml
      corpus build --config examples/openai.toml --run v1 --max-cost 20
      corpus build --config corpus.toml --executor ray --ray-address auto
    """
    from builder.pipeline import build as run_build

    cfg = _config(config_path, executor_overrides(executor, ray_address))
    summary = run_build(
        cfg,
        run=run_name,
        max_cost=max_cost,
        cache_dir=cache_dir,
        progress=False if no_progress else None,
        log=_log,
    )
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
        return
    if summary.up_to_date:
        click.echo(f"run '{summary.run}' is up to date: nothing to do ({summary.run_dir})")
    click.echo(
        f"documents: {summary.documents:,}   tokens: {summary.tokens:,}   units: {summary.units:,}"
    )
    rejected = sum(summary.rejected.values())
    if summary.rejected:
        parts = ", ".join(f"{k} {v}" for k, v in summary.rejected.items())
        click.echo(f"rejected: {rejected:,} ({parts})")
    else:
        click.echo("rejected: 0")
    click.echo(
        f"requests: {summary.requests_sent:,} sent, {summary.requests_cached:,} from the cache   "
        f"cost: ${summary.cost:.4f} (this run directory so far: ${summary.total_cost:.4f})"
    )
    if summary.stage_seconds:
        parts = ", ".join(f"{k} {v:.1f}s" for k, v in summary.stage_seconds.items())
        click.echo(f"time: {parts}")
    if summary.syllabi_failed:
        click.echo(
            f"no syllabus for: {', '.join(summary.syllabi_failed)} (walked by topic; rerun "
            "`corpus syllabus generate` or write them by hand)"
        )
    click.echo(f"card:    {summary.card}")
    click.echo(f"report:  {summary.report}")
    click.echo(f"shards:  {summary.shards}/")


@click.command("report")
@config_option
@click.option("--run", "run_name", default=None, help="Run name (default: [output] run).")
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
def report(config_path: str | None, run_name: str | None, run_dir: str | None) -> None:
    """Write report.html of a run: the build's report stage, or a re-render of a copied run.

    With --config/--run: the report stage of that run (coverage, quality, diversity from
    its files; skipped when up to date). With a RUN_DIR argument: re-render the dataset card
    (README.md) and report.html from the directory alone (manifest, shards,
    rejected.parquet), so it works on a copied run too.

    \b
    Example:
      corpus report outputs/demo
      corpus report --config corpus.toml --run demo
    """
    from builder.assemble import read_manifest
    from builder.card import write_card
    from builder.report import write_report

    if run_dir is None:
        # The build's report stage over the config's run (skipped when up to date).
        from builder.run.build import run_named

        summary = run_named(_config(config_path), ["report"], run_name, progress=False, log=_log)
        click.echo(f"card:    {summary.card}")
        click.echo(f"report:  {summary.report}")
        return
    run_path = Path(run_dir)
    read_manifest(run_path)  # an InputError naming the file when the run is not finished
    click.echo(f"card:    {write_card(run_path)}")
    click.echo(f"report:  {write_report(run_path)}")
