"""The dataset card (README.md) of an export: a YAML header whose ``configs`` tell
``datasets.load_dataset(OUT)`` where each split's files are, then what the rows hold."""

from __future__ import annotations

import json
from typing import Any

from builder.export.options import ExportOptions

_FIELDS: dict[str, str] = {
    "chat": "`messages`: a list of `{role, content}` turns (optional `system`, then `user`: "
    "the exercise as a student sees it, then `assistant`: the worked solution). This is the "
    "conversational format TRL's `SFTTrainer` reads directly.",
    "alpaca": "`instruction` (the problem), `input` (extra context such as a function "
    "signature, or empty) and `output` (the worked solution).",
    "sharegpt": "`conversations`: a list of `{from, value}` turns (`system`?, `human`, `gpt`).",
    "text": "`text`: sections as written and exercises as Markdown (problem, then solution), "
    "for continued pre-training.",
}
_REASONING: dict[str, str] = {
    "include": "Reasoning traces, where the teacher model returned them, are inside the "
    "answer as a `<think>…</think>` prefix.",
    "drop": "Reasoning traces are left out; answers only.",
    "as-field": "Reasoning traces, where the teacher model returned them, are in the "
    "`reasoning` column (null otherwise); answers do not contain them.",
}


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return label
    return "100K<n<1M" if n < 1_000_000 else "n>1M"


def card_text(
    opts: ExportOptions,
    *,
    files: dict[str, list[str]],
    counts: dict[str, int],
    skipped: dict[str, int],
    models: list[str],
    nodes: tuple[int, int],
    source: dict[str, Any],
    license_id: str | None,
) -> str:
    """README.md of an export (deterministic: no clock values)."""
    ext = "jsonl" if opts.jsonl else "parquet"
    total = sum(counts.values())
    task = "text-generation"
    lines = ["---"]
    if license_id:
        lines.append(f"license: {license_id}")
    lines += [
        "language:",
        "  - en",
        "size_categories:",
        f"  - {_size_category(total)}",
        "task_categories:",
        f"  - {task}",
        "tags:",
        "  - synthetic",
        "  - curriculum",
        f"  - {opts.format}",
        "configs:",
        "  - config_name: default",
        "    data_files:",
    ]
    for split in files:
        lines += [f"      - split: {split}", f"        path: data/{split}-*.{ext}"]
    lines += ["---", "", f"# Curriculum corpus export ({opts.format})", ""]
    lines.append(
        f"{total:,} rows exported from the run `{source.get('run') or source.get('path')}` "
        f"by `corpus export`, in the **{opts.format}** format. Each row is one document of "
        "that run and keeps its provenance columns (`id`, `taxonomy_path`, `template`, "
        "`model`, `verified`, scores when the run has them, `parent_id` for Evol-Instruct "
        "chains)."
    )
    if models:
        lines += [
            "",
            f"Teacher model(s): {', '.join(f'`{m}`' for m in models)}. Every row was written "
            "by a language model; the source run's card states the model terms and how the "
            "corpus was built, filtered and deduplicated.",
        ]
    lines += ["", "## Fields", "", _FIELDS[opts.format], "", _REASONING[opts.reasoning], ""]
    lines += ["## Splits", "", "| split | rows | files |", "|---|---:|---:|"]
    for split, names in files.items():
        lines.append(f"| {split} | {counts.get(split, 0):,} | {len(names)} |")
    lines.append("")
    if opts.split_by:
        lines.append(
            f"No taxonomy node at level `{opts.split_level}` has rows in more than one split: "
            f"a node goes to `test` when a sha256 of it (seed {opts.seed}) falls below "
            f"{opts.test_fraction:g}: {nodes[0]} of {nodes[1]} node(s) are held out."
        )
        lines.append("")
    lines += ["## Selection", "", f"- kinds: {', '.join(opts.kinds)}"]
    if opts.verified_only:
        lines.append("- verified exercises only (`verified` is true)")
    if opts.min_edu_score is not None:
        lines.append(f"- `edu_score` >= {opts.min_edu_score:g}")
    for reason, n in sorted(skipped.items()):
        lines.append(f"- skipped {n:,} row(s): {reason}")
    lines += [
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        'ds = load_dataset("path/to/this/directory")',
        "```",
        "",
        "## Export settings",
        "",
        "```json",
        json.dumps(opts.describe(), indent=2, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(lines)
