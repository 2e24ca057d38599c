"""``corpus export``: a finished run as a training dataset (chat, Alpaca, ShareGPT, text)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from builder.export import FORMAT_NAMES, REASONING_MODES, ExportOptions, export_run


def _kinds(value: str | None) -> tuple[str, ...]:
    return tuple(k.strip() for k in (value or "").split(",") if k.strip())


@click.command()
@click.option(
    "--run",
    "run_dir",
    required=True,
    type=click.Path(file_okay=False, exists=True),
    help="The run directory to export (outputs/<run>/).",
)
@click.option("--format", "fmt", required=True, type=click.Choice(FORMAT_NAMES), help="Row format.")
@click.option(
    "--kinds",
    default=None,
    help="Comma-separated document kinds (default: exercise; text: section).",
)
@click.option("--verified-only", is_flag=True, help="Only exercises whose check passed.")
@click.option("--min-edu-score", type=float, default=None, help="Only rows with edu_score >= this.")
@click.option(
    "--split-by",
    type=click.Choice(["node"]),
    default=None,
    help="Hold out whole taxonomy nodes as a test split.",
)
@click.option(
    "--split-level",
    default="node",
    show_default=True,
    help="Node level for --split-by: discipline, subject, node, or a path depth (1, 2...).",
)
@click.option(
    "--test-fraction",
    type=float,
    default=0.1,
    show_default=True,
    help="Fraction of nodes held out.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the node split.")
@click.option(
    "--reasoning",
    type=click.Choice(REASONING_MODES),
    default="as-field",
    show_default=True,
    help="Reasoning traces: inside the answer as <think>..</think>, dropped, or a column.",
)
@click.option("--jsonl", is_flag=True, help="Write JSONL shards instead of Parquet.")
@click.option("--system", default=None, help="A system message (chat and sharegpt).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("-o", "--out", required=True, type=click.Path(), help="Output dataset directory.")
def export(
    run_dir: str,
    fmt: str,
    kinds: str | None,
    verified_only: bool,
    min_edu_score: float | None,
    split_by: str | None,
    split_level: str,
    test_fraction: float,
    seed: int,
    reasoning: str,
    jsonl: bool,
    system: str | None,
    as_json: bool,
    out: str,
) -> None:
    """Export a run's documents as a training dataset that `datasets.load_dataset(OUT)` loads.

    chat: `messages` (user = the exercise, assistant = the worked solution), what TRL's
    SFTTrainer reads; alpaca: instruction/input/output; sharegpt: conversations of
    from/value; text: sections (add exercises with --kinds section,exercise). Rows keep
    their provenance (id, taxonomy_path, template, model, verified, scores, parent_id).
    Rerunning with the same options rewrites identical files.

    \b
    Example:
      corpus export --run outputs/demo --format chat --verified-only \\
          --split-by node --split-level subject --test-fraction 0.1 -o exports/demo-chat
    """
    opts = ExportOptions(
        format=fmt,
        kinds=_kinds(kinds),
        verified_only=verified_only,
        min_edu_score=min_edu_score,
        split_by=split_by,
        split_level=split_level,
        test_fraction=test_fraction,
        seed=seed,
        reasoning=reasoning,
        jsonl=jsonl,
        system=system,
    )
    summary = export_run(Path(run_dir), Path(out), opts)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), sort_keys=True))
        return
    for split, n in summary.counts.items():
        click.echo(f"{split}: {n:,} row(s) in {len(summary.files[split])} file(s)")
    for reason, n in summary.skipped.items():
        click.echo(f"skipped: {n:,} row(s): {reason}")
    click.echo(f"dataset: {summary.out}")
