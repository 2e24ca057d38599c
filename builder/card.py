"""The dataset card ``outputs/<run>/README.md`` (Hugging Face format).

A YAML header the Hub reads (license, language, size category, task categories, tags and a
``configs`` entry pointing at ``documents/*.parquet``, so ``load_dataset(<run dir>)`` works),
then prose and tables: how the corpus was made, the teacher model(s) and a warning about
their terms, counts and tokens per discipline, filter / dedup / decontamination settings and
results, cost and time, known limitations, and how to load it.

Everything comes from the manifest (written by ``builder.assemble``), the config and the
``stats`` dict the pipeline collects, so ``corpus report`` can regenerate the card from a run
directory alone.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.assemble import read_manifest
from builder.util.files import atomic_write_bytes

if TYPE_CHECKING:  # pragma: no cover
    from builder.config import CorpusConfig

CARD_NAME = "README.md"

# Hugging Face's size buckets (number of rows), in order.
_SIZE_BUCKETS: tuple[tuple[int, str], ...] = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
    (10_000_000_000, "1B<n<10B"),
    (100_000_000_000, "10B<n<100B"),
    (1_000_000_000_000, "100B<n<1T"),
)

TERMS_WARNING = (
    "**Terms of use.** Some model providers' terms forbid using their outputs to develop or "
    "train models that compete with them (OpenAI's and Anthropic's terms, for example, contain "
    "such clauses), and some open-weight licences attach conditions to outputs or to models "
    "trained on them. Check the current terms of every teacher model listed above before you "
    "train on, share or publish this corpus."
)


def size_category(n: int) -> str:
    """Hugging Face ``size_categories`` bucket for ``n`` rows (``n<1K`` ... ``n>1T``)."""
    for limit, label in _SIZE_BUCKETS:
        if n < limit:
            return label
    return "n>1T"


# ---------------------------------------------------------------------------------------------
# A small YAML emitter: plain scalars only where every YAML 1.1 and 1.2 reader agrees.

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.*/<>+-]*$")
# Characters YAML does not allow raw, or reads as line breaks (NEL, LS, PS): escaped in quotes.
_UNPRINTABLE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]")
_YAML11_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "none", "~"}


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _YAML11_WORDS:
        return text
    quoted = json.dumps(text, ensure_ascii=False)
    return _UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", quoted)


def _yaml_lines(value: Any, indent: int = 0) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(v, Mapping | list) and v:
                lines.append(f"{pad}{_scalar(k)}:")
                lines.extend(_yaml_lines(v, indent + 2))
            else:
                empty = "{}" if isinstance(v, Mapping) else "[]" if isinstance(v, list) else None
                lines.append(f"{pad}{_scalar(k)}: {empty or _scalar(v)}")
    elif isinstance(value, list):
        for item in value:
            sub = _yaml_lines(item, indent + 2) if isinstance(item, Mapping | list) else None
            if isinstance(item, Mapping | list) and not item:
                lines.append(f"{pad}- {'{}' if isinstance(item, Mapping) else '[]'}")
            elif sub:
                lines.append(f"{pad}- {sub[0].lstrip()}")
                lines.extend(sub[1:])
            else:
                lines.append(f"{pad}- {_scalar(item)}")
    else:
        lines.append(f"{pad}{_scalar(value)}")
    return lines


def to_yaml(data: Mapping[str, Any]) -> str:
    """Block-style YAML of nested dicts/lists of scalars, keys in insertion order."""
    return "\n".join(_yaml_lines(data)) + "\n"


# ---------------------------------------------------------------------------------------------
# The pipeline's stats dict (every key optional)
#
#   cost_usd: float                  total spend of the build (cached requests cost 0)
#   seconds: float                   wall time of the build
#   stages: {stage: {metric: value}} per stage, in pipeline order (seconds, requests, ...)
#   stage_seconds: {stage: float}    the same, seconds only (used when "stages" is absent)
#   generate: {...}                  generation counters (planned, sent, cached, cost, ...)
#   filter|filters, verify, dedup, decontam: {...}   stage results ("settings" is ignored:
#                                    the card shows the settings from the config)
#   anything else: shown as a total in the cost and time section when it is a scalar


def stage_rows(stats: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-stage metrics from ``stats["stages"]``, or from ``stats["stage_seconds"]``."""
    stages = stats.get("stages")
    if isinstance(stages, Mapping) and stages:
        return {
            str(k): dict(v) if isinstance(v, Mapping) else {"value": v} for k, v in stages.items()
        }
    seconds = stats.get("stage_seconds")
    if isinstance(seconds, Mapping):
        return {str(k): {"seconds": v} for k, v in seconds.items()}
    return {}


def stage_result(stats: Mapping[str, Any], *names: str) -> dict[str, Any]:
    """The first of ``stats[name]`` that is a non-empty dict, without its ``settings``."""
    for name in names:
        value = stats.get(name)
        if isinstance(value, Mapping) and value:
            return {k: v for k, v in value.items() if k != "settings"}
    return {}


STAT_RESULT_KEYS = frozenset(
    {"stages", "stage_seconds", "generate", "filter", "filters", "verify", "dedup", "decontam"}
)


def stat_totals(stats: Mapping[str, Any]) -> dict[str, Any]:
    """Scalar entries of ``stats`` (cost_usd, seconds, units, ...), for a totals table."""
    return {
        k: v
        for k, v in stats.items()
        if k not in STAT_RESULT_KEYS and (v is None or isinstance(v, str | int | float | bool))
    }


# ---------------------------------------------------------------------------------------------
# Markdown helpers


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value) or "(none)"
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_cell(v)}" for k, v in value.items()) or "(none)"
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table; numbers right-aligned."""
    rows = [list(r) for r in rows]
    align = []
    for i, _ in enumerate(headers):
        numeric = rows and all(
            isinstance(r[i], int | float) and not isinstance(r[i], bool)
            for r in rows
            if r[i] is not None
        )
        align.append("---:" if numeric else "---")
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    out.extend("| " + " | ".join(_cell(v) for v in r) + " |" for r in rows)
    return "\n".join(out)


def _kv_table(data: Mapping[str, Any], header: str = "setting") -> str:
    return md_table([header, "value"], [[k, v] for k, v in data.items()])


def _model_label(model: str) -> str:
    """Local model paths are shown by file name (a path says nothing on another machine)."""
    if "/" in model and model.lower().endswith(".gguf"):
        return os.path.basename(model)
    return model


def _is_embedded(config: Any, models: Iterable[str]) -> bool:
    llm = getattr(config, "llm", None)
    if llm is not None:
        if llm.embedded:
            return True
        if llm.embedded is None and not llm.base_url and not llm.endpoints:
            return True
    return any("smollm" in m.lower() for m in models)


def _node_name(taxonomy: Any, node_id: str) -> str:
    if taxonomy is None:
        return ""
    try:
        return str(taxonomy[node_id].name)
    except (KeyError, AttributeError, TypeError):
        return ""


def _share(n: int, total: int) -> str:
    return f"{100 * n / total:.1f}%" if total else "-"


# ---------------------------------------------------------------------------------------------
# The card


def render_card(
    *,
    config: CorpusConfig,
    manifest: Mapping[str, Any],
    stats: Mapping[str, Any] | None = None,
    taxonomy: Any = None,
    quality: Any = None,
) -> str:
    """The dataset card as a string (see ``write_card``)."""
    stats = dict(stats if stats is not None else manifest.get("stats") or {})
    counts = manifest.get("counts", {})
    n_docs = int(counts.get("documents", 0))
    n_tokens = int(counts.get("tokens", 0))
    out = config.output
    by_model: dict[str, dict[str, int]] = counts.get("by_model", {})
    models = [m for m in by_model if m != "null"]
    embedded = _is_embedded(config, models)
    name = out.pretty_name or f"Curriculum corpus: {out.run}"
    language = config.filters.language or "en"

    header: dict[str, Any] = {"license": out.license}
    if out.license == "other":
        header["license_name"] = out.license_name or "see-dataset-card"
        if out.license_link:
            header["license_link"] = out.license_link
    header.update(
        {
            "language": [language],
            "pretty_name": name,
            "size_categories": [size_category(n_docs)],
            "task_categories": ["text-generation"],
            "tags": ["synthetic", "textbook", "curriculum"],
            "configs": [
                {
                    "config_name": "default",
                    "data_files": [{"split": "train", "path": "documents/*.parquet"}],
                }
            ],
        }
    )

    by_disc: dict[str, dict[str, int]] = counts.get("by_discipline", {})
    parts: list[str] = ["---", to_yaml(header).rstrip("\n"), "---", "", f"# {name}", ""]
    parts.append(
        f"A synthetic, textbook-style corpus of **{n_docs:,} documents** and "
        f"**{n_tokens:,} tokens** (cl100k_base) across {len(by_disc)} discipline(s), built "
        f"with curriculum-corpus-builder {manifest.get('builder_version', '')} from a curated "
        "taxonomy. Every document was written by a language model; none of it was written "
        "or checked by a person."
    )
    parts.append("")

    # How it was made
    cfg_walk = {
        k: v for k, v in config.walk.model_dump(mode="json").items() if v not in (None, [], {})
    }
    f = config.filters
    dropped = [
        name
        for name, on in (
            ("truncated", f.drop_truncated),
            ("refused", f.drop_refusals),
            (f"too short (< {f.min_tokens} tokens)", f.min_tokens > 0),
            ("repetitive", f.max_repetition < 1),
            (f"not in language '{f.language}'", bool(f.language)),
        )
        if on
    ]
    filters_line = (
        f"6. **Filters**: {', '.join(dropped)} answers are dropped"
        + ("" if f.drop_truncated else "; truncated prose is kept (`finish_reason` = length)")
        + "."
        if dropped
        else "6. **Filters**: none enabled."
    )
    parts += [
        "## How it was made",
        "",
        "1. **Taxonomy**: a curated tree of disciplines, subjects and topics (YAML files under "
        f"`{config.taxonomy.dir}/`), with "
        "prerequisites between nodes.",
        "2. **Syllabi**: per subject, a syllabus of class sessions and key concepts "
        "(GLAN-style), generated once and curated in YAML.",
        "3. **Walk**: a seeded, weighted, coverage-aware walk over the taxonomy picks generation "
        f"units (a topic, a session, a few concepts); walk settings: {_cell(cfg_walk)}.",
        "4. **Templates**: Jinja templates turn each unit into chat requests (textbook "
        "sections, exercises, solutions) for several audiences and styles.",
        "5. **Teacher model**: an OpenAI-compatible endpoint answers every request (see "
        "below); answers are cached by a hash of everything sent.",
        filters_line,
        "7. **Verification**: code exercises are executed in a sandbox and answers checked "
        "where possible (`verified` column: true, false, or null when not checkable).",
        "8. **Deduplication**: exact and MinHash-LSH near-duplicate removal.",
        "9. **Decontamination**: n-gram overlap against benchmark test sets.",
        "10. **Assembly**: Parquet shards sorted by id, cl100k token counts, this card, "
        "`manifest.json` (config hash, package versions, shard sha256) and `report.html`.",
        "",
    ]
    templates = counts.get("by_template", {})
    if templates:
        parts += [
            "Templates used:",
            "",
            md_table(
                ["template", "documents", "tokens"],
                [
                    [t if t != "null" else "(not recorded)", v["documents"], v["tokens"]]
                    for t, v in templates.items()
                ],
            ),
            "",
        ]

    # Teacher models
    parts += ["## Teacher model(s)", ""]
    if by_model:
        parts.append(
            md_table(
                ["model", "documents", "tokens"],
                [
                    [
                        _model_label(m) if m != "null" else "(not recorded)",
                        v["documents"],
                        v["tokens"],
                    ]
                    for m, v in by_model.items()
                ],
            )
        )
    else:
        parts.append("No documents, so no model is recorded.")
    parts.append("")
    if embedded:
        parts += [
            "The embedded demo model (SmolLM2-135M-Instruct, Apache-2.0, run locally through "
            "llama.cpp) wrote these documents. It is fluent but shallow and often wrong: this "
            "corpus demonstrates the pipeline and is not meant to train a useful model.",
            "",
        ]
    parts += [TERMS_WARNING, ""]

    # Contents
    parts += ["## Contents", ""]
    named = taxonomy is not None
    rows = []
    for d, v in by_disc.items():
        name_cell = [_node_name(taxonomy, d)] if named else []
        rows.append([d, *name_cell, v["documents"], v["tokens"], _share(v["tokens"], n_tokens)])
    rows.append(["**total**", *([""] if named else []), n_docs, n_tokens, "100%"])
    headers = ["discipline", *(["name"] if named else []), "documents", "tokens", "token share"]
    parts += ["Documents and tokens per discipline:", "", md_table(headers, rows), ""]
    by_kind = counts.get("by_kind", {})
    if by_kind:
        parts += [
            "Per kind of document:",
            "",
            md_table(
                ["kind", "documents", "tokens"],
                [[k, v["documents"], v["tokens"]] for k, v in by_kind.items()],
            ),
            "",
        ]
    verified = counts.get("by_verified", {})
    if verified:
        label = {"true": "verified", "false": "checked, failed", "null": "not checkable"}
        parts += [
            "Verification (`verified` column):",
            "",
            md_table(
                ["verified", "documents"],
                [[label.get(k, k), v["documents"]] for k, v in verified.items()],
            ),
            "",
        ]
    parts += [
        "Columns: "
        + ", ".join(f"`{c['name']}` ({c['type']})" for c in manifest.get("columns", [])),
        "",
        "Token counts (`n_tokens`) use OpenAI's cl100k_base encoding (tiktoken); other "
        "tokenizers give other counts.",
        "",
    ]

    # Filters, dedup, decontam
    rejected = counts.get("rejected", {})
    parts += ["## Filtering, deduplication and decontamination", ""]
    parts += [
        f"{rejected.get('total', 0):,} generated documents were dropped; each is listed with "
        "its stage and reason in `rejected.parquet`.",
        "",
    ]
    by_sr = rejected.get("by_stage_reason", {})
    curator = by_sr.get("review", {}).get("curator", 0)  # flags from `corpus review`
    if curator:
        parts += [f"{curator:,} of them were flagged by a curator (`corpus review`).", ""]
    if by_sr:
        parts += [
            md_table(
                ["stage", "reason", "documents"],
                [[s, r, n] for s, reasons in by_sr.items() for r, n in reasons.items()],
            ),
            "",
        ]
    sections = [
        ("Filters", config.filters, stage_result(stats, "filters", "filter")),
        ("Verification", config.verify, stage_result(stats, "verify")),
        ("Deduplication", config.dedup, stage_result(stats, "dedup")),
        ("Decontamination", config.decontam, stage_result(stats, "decontam")),
    ]
    for title, settings, result in sections:
        parts += [f"### {title}", "", "Settings:", "", _kv_table(settings.model_dump(mode="json"))]
        if isinstance(result, Mapping) and result:
            parts += ["", "Results:", "", _kv_table(result, "result")]
        parts.append("")
    if not config.decontam.enabled or not config.decontam.benchmarks:
        parts += [
            "> Decontamination was "
            + ("disabled" if not config.decontam.enabled else "run without any benchmark")
            + ": this corpus may contain benchmark test items.",
            "",
        ]

    # Quality gates and diversity (builder.quality.summary.QualitySummary)
    if quality is not None:
        parts += [quality.to_markdown(), ""]

    # Cost and time
    stages = stage_rows(stats)
    totals = stat_totals(stats)
    generation = stage_result(stats, "generate")
    if stages or totals or generation:
        parts += ["## Cost and time", ""]
        if "cost_usd" in totals:
            parts.append(f"Total cost: ${float(totals['cost_usd']):,.4f} (cached requests cost 0).")
        if "seconds" in totals:
            parts.append(f"Wall time: {float(totals['seconds']):,.1f} s.")
        parts.append("")
        rest = {k: v for k, v in totals.items() if k not in ("cost_usd", "seconds")}
        if rest:
            parts += [_kv_table(rest, "total"), ""]
        if generation:
            parts += ["Generation:", "", _kv_table(generation, "counter"), ""]
        if stages:
            keys: list[str] = []
            for v in stages.values():
                for k in v if isinstance(v, Mapping) else {}:
                    if k not in keys:
                        keys.append(k)
            parts += [
                md_table(
                    ["stage", *keys],
                    [[s, *[(v or {}).get(k) for k in keys]] for s, v in stages.items()],
                ),
                "",
            ]

    # Limitations
    parts += [
        "## Known limitations",
        "",
        "- **Model collapse.** Training a model on its own outputs, or on the outputs of a "
        "weaker model, over several generations narrows and degrades what it produces. Mix "
        "this corpus with human-written data and do not feed it back into the model that wrote "
        "it.",
        "- **Unverified facts.** Only rows with `verified` = true passed an automatic check; "
        "everything else (all prose sections, most exercises) is unverified model output and "
        "can be wrong, however confident it sounds.",
        "- **Coverage and bias.** The corpus covers exactly the curated taxonomy, weighted as "
        "configured, and inherits the teacher model's biases and blind spots.",
        "- **Near-duplicates and contamination** are removed only as far as the MinHash and "
        "n-gram settings above detect them.",
    ]
    if embedded:
        parts.append(
            "- **Demo model quality.** SmolLM2-135M is a very small model; expect shallow and "
            "frequently incorrect content."
        )
    parts.append("")

    # Loading
    parts += [
        "## Loading",
        "",
        "```python",
        "import polars as pl",
        'df = pl.read_parquet("documents/*.parquet")',
        "",
        "from datasets import load_dataset",
        'ds = load_dataset("parquet", data_files="documents/*.parquet", split="train")',
        "```",
        "",
        "## Provenance",
        "",
        f"- config hash: `{manifest.get('config_hash', '')}`",
        f"- shards: {len(manifest.get('shards', []))} (sha256 of each in `manifest.json`)",
        f"- assembled: {manifest.get('created_at', '')}",
        "- packages: "
        + ", ".join(f"{k} {v}" for k, v in (manifest.get("packages") or {}).items() if v),
        "",
    ]
    return "\n".join(parts)


def write_card(
    run_dir: str | os.PathLike[str],
    *,
    config: CorpusConfig | None = None,
    manifest: Mapping[str, Any] | None = None,
    stats: Mapping[str, Any] | None = None,
    taxonomy: Any = None,
    quality: Any = None,
) -> Path:
    """Write ``<run_dir>/README.md`` atomically and return its path.

    ``manifest`` defaults to the run's ``manifest.json`` and ``config`` to the config recorded
    in it; ``stats`` defaults to ``manifest["stats"]``. ``taxonomy`` (optional) adds node names.
    """
    run = Path(run_dir)
    if manifest is None:
        manifest = read_manifest(run)
    if config is None:
        from builder.config import CorpusConfig

        config = CorpusConfig.model_validate(manifest.get("config") or {})
    text = render_card(
        config=config, manifest=manifest, stats=stats, taxonomy=taxonomy, quality=quality
    )
    path = run / CARD_NAME
    atomic_write_bytes(path, text.encode("utf-8"))
    return path
