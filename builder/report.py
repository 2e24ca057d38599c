"""``outputs/<run>/report.html``: coverage and quality of a run, per taxonomy node.

One self-contained HTML file (plots are inline base64 PNGs, CSS and a few lines of JS are
inline, nothing is fetched) that opens offline, plus PNG copies of the plots in
``<run>/report/``. Sections:

- coverage per taxonomy node: a squarified treemap whose areas are the taxonomy's planned
  shares (node weights) and whose colours are the documents produced, so nodes with no
  documents show up as grey gaps; and a table per node;
- length (words) and token distributions per kind of document;
- rejection reasons per stage;
- duplicate and contamination rates per node (from ``rejected.parquet``);
- repeated openers: the most common first words of documents;
- cost and time per stage (from the pipeline's ``stats``).

Everything is computed from the run's files (or the frames given), so ``corpus report`` can
rebuild the report of any finished run. Plots use Matplotlib's Agg canvas directly (no pyplot
and no global backend switch).
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from builder.assemble import DOCUMENTS_DIR, MANIFEST_NAME, REJECTED_NAME, Source
from builder.card import stage_result, stage_rows, stat_totals
from builder.report_data import (
    BATCH_ROWS,
    CONTAM_STAGE_PREFIX,
    DUP_STAGE_PREFIX,
    OPENER_TOP,
    UNKNOWN_PATH,
    DocumentSummary,
    TreeNode,
    document_facts,
    leaf_nodes,
    load_source,
    node_table,
    opener_table,
    rejection_counts,
    rejection_facts,
    summarize_documents,
)
from builder.report_html import (
    _TEMPLATE,
    _diversity_tables,
    _fmt_int,
    _fmt_pct,
    _frame_table,
    html_table,
)
from builder.report_plots import plot_bars, plot_coverage, plot_lengths, plot_rates, squarify
from builder.util.files import atomic_write_bytes

__all__ = [
    "CONTAM_STAGE_PREFIX",
    "DUP_STAGE_PREFIX",
    "OPENER_TOP",
    "PLOTS_DIR",
    "REPORT_NAME",
    "UNKNOWN_PATH",
    "DocumentSummary",
    "TreeNode",
    "document_facts",
    "html_table",
    "node_table",
    "opener_table",
    "rejection_facts",
    "squarify",
    "summarize_documents",
    "write_report",
]

REPORT_NAME = "report.html"
PLOTS_DIR = "report"


@dataclass
class _Plot:
    name: str
    png: bytes
    caption: str


def write_report(
    run_dir: str | os.PathLike[str],
    *,
    documents: Source = None,
    rejected: Source = None,
    diversity: Any = None,
    coverage: Any = None,
    taxonomy: Any = None,
    stats: Mapping[str, Any] | None = None,
    manifest: Mapping[str, Any] | None = None,
    opener_words: int | None = None,
    quality: Any = None,
    batch_rows: int | None = None,
) -> Path:
    """Write ``<run_dir>/report.html`` and the PNG plots in ``<run_dir>/report/``.

    The documents are read ``batch_rows`` at a time (default: the run's ``[run]
    partition_rows``) and only aggregates are kept (``summarize_documents``), so memory does
    not grow with the corpus.

    ``quality`` (``builder.quality.summary.QualitySummary``) adds a diversity table per node
    and a 2-D map of the document embeddings coloured by discipline.

    ``documents`` / ``rejected`` default to the run's shards and ``rejected.parquet``;
    ``stats`` and ``manifest`` default to the run's ``manifest.json`` (and its ``stats``).
    ``taxonomy`` (a ``builder.taxonomy.Taxonomy``) adds node names, planned shares and the
    nodes that got no documents (limited to the config's ``walk.subtree`` when set).
    ``coverage`` is the walker's ``Coverage`` (adds a "units planned" column per node) or a
    frame shown as a table; ``diversity`` (``builder.diversity.DiversityReport``, or a dict
    of name -> frame plus an optional ``summary`` dict) is shown as extra tables; it may be a
    callable returning one, called once the documents are summarised and the plots drawn (so
    it can be computed meanwhile: a future's ``result``). Returns the path of ``report.html``.
    """
    import json

    from jinja2 import Environment
    from markupsafe import Markup, escape

    run = Path(run_dir)
    if manifest is None and (run / MANIFEST_NAME).exists():
        manifest = json.loads((run / MANIFEST_NAME).read_text(encoding="utf-8"))
    manifest = dict(manifest or {})
    stats = dict(stats if stats is not None else manifest.get("stats") or {})
    if opener_words is None:
        opener_words = int((manifest.get("config") or {}).get("output", {}).get("opener_words", 4))

    if batch_rows is None:
        batch_rows = int((manifest.get("config") or {}).get("run", {}).get("partition_rows", 0))
    docs_lf = load_source(documents, run / DOCUMENTS_DIR, "documents")
    rej_lf = load_source(rejected, run / REJECTED_NAME, "rejected")
    facts = summarize_documents(
        docs_lf
        if docs_lf is not None
        else pl.LazyFrame(schema={"text": pl.String, "taxonomy_path": pl.String}),
        opener_words,
        batch_rows=batch_rows or BATCH_ROWS,
        spill_dir=run if run.is_dir() else None,
    )
    rejections = rejection_counts(rej_lf)
    cfg = manifest.get("config") or {}
    nodes = node_table(
        facts,
        rejections,
        taxonomy,
        subtrees=tuple((cfg.get("walk") or {}).get("subtree") or ()),
        include_proposed=bool((cfg.get("taxonomy") or {}).get("include_proposed")),
    )
    planned_units = getattr(coverage, "subtree", None)

    plots: dict[str, _Plot] = {}
    planned = taxonomy is not None
    plots["coverage"] = _Plot(
        "coverage",
        plot_coverage(nodes, planned=planned),
        "Each rectangle is a taxonomy node, nested discipline > subject > topic. "
        + (
            "Area is the node's planned share (taxonomy weights); colour is the number of "
            "documents produced; hatched grey cells got no documents."
            if planned
            else "Area and colour are the number of documents (pass the taxonomy to see gaps)."
        ),
    )
    plots["tokens"] = _Plot(
        "tokens",
        plot_lengths(facts),
        "Words and cl100k tokens per document, stacked by kind; the dashed line is the median.",
    )
    rej_counts = (
        rejections.group_by("stage", "reason")
        .agg(pl.col("len").sum())
        .sort(["len", "stage", "reason"], descending=[True, False, False])
    )
    palette = ["#2c7fb8", "#e6550d", "#756bb1", "#31a354", "#de2d26", "#636363", "#fdae6b"]
    stage_list = sorted(rej_counts["stage"].unique().to_list())
    stage_colour = {s: palette[i % len(palette)] for i, s in enumerate(stage_list)}
    top_rej = rej_counts.head(30)
    plots["rejections"] = _Plot(
        "rejections",
        plot_bars(
            [f"{s}: {r}" for s, r in zip(top_rej["stage"], top_rej["reason"], strict=True)],
            top_rej["len"].to_list(),
            title="Rejected documents by stage and reason",
            xlabel="documents",
            empty="no rejected documents",
            colors=[stage_colour[s] for s in top_rej["stage"]],
        ),
        "Documents dropped, by stage and reason (bar colour = stage); all of them are in "
        "rejected.parquet.",
    )
    depth_max = max((n.depth for n in nodes.values()), default=0)
    rate_nodes = sorted(
        (
            n
            for n in nodes.values()
            if (not n.children or n.depth == depth_max) and (n.duplicates or n.contaminated)
        ),
        key=lambda n: (-((n.dup_rate or 0) + (n.contam_rate or 0)), n.path),
    )[:25]
    plots["duplicates"] = _Plot(
        "duplicates",
        plot_rates(rate_nodes),
        "Per leaf node: duplicates removed / documents entering dedup, and contaminated "
        "documents removed / documents entering decontamination.",
    )
    openers = opener_table(facts)
    plots["openers"] = _Plot(
        "openers",
        plot_bars(
            [f"“{o}…”" for o in openers["opener"].to_list()],
            openers["documents"].to_list(),
            title=f"Most repeated openers (first {opener_words} words)",
            xlabel="documents",
            empty="no opener is repeated",
        ),
        "How many documents start with the same words: a high count means the teacher "
        "model repeats itself (vary templates, styles or temperature).",
    )
    stages = stage_rows(stats)
    stage_secs = {
        s: float(v.get("seconds") or 0) for s, v in stages.items() if isinstance(v, Mapping)
    }
    if stage_secs:
        names = list(stage_secs)
        plots["stages"] = _Plot(
            "stages",
            plot_bars(
                names,
                [stage_secs[s] for s in names],
                title="Time per stage",
                xlabel="seconds",
                empty="no timings",
                fmt="{:,.1f} s",
            ),
            "Wall time of each stage in this build (cached work takes little time).",
        )

    # Quality gates and diversity (builder.quality)
    quality_html = ""
    if quality is not None:
        if quality.map.height:
            plots["map"] = _Plot(
                "map",
                quality.map_png(),
                "Each dot is a document, placed by the first two principal components of its "
                "embedding and coloured by discipline: tight clumps are documents that say "
                "the same thing.",
            )
        quality_html = _frame_table(quality.nodes)
        if quality.summary:
            flat = {k: v for k, v in quality.summary.items() if k not in ("embedder_terms",)}
            quality_html = (
                html_table(["gate", "value"], [[k, v] for k, v in flat.items()]) + quality_html
            )

    # PNG copies
    plots_dir = run / PLOTS_DIR
    plots_dir.mkdir(parents=True, exist_ok=True)
    for plot in plots.values():
        atomic_write_bytes(plots_dir / f"{plot.name}.png", plot.png)

    def figure(name: str) -> Markup:
        plot = plots[name]
        from PIL import Image

        with Image.open(io.BytesIO(plot.png)) as im:
            w, h = im.size
        data = base64.b64encode(plot.png).decode("ascii")
        return Markup(
            f'<figure id="fig-{name}"><img class="plot" alt="{escape(plot.caption)}" '
            f'width="{w}" height="{h}" src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(plot.caption)} (PNG: report/{name}.png)</figcaption></figure>"
        )

    # Tables and numbers
    counts = manifest.get("counts") or {}
    n_docs = facts.documents
    n_tokens = facts.tokens
    n_rej = int(rejections["len"].sum())
    leaves = leaf_nodes(nodes)
    covered = sum(1 for n in leaves if n.documents)
    total_dups = int(
        rejections.filter(pl.col("stage").str.starts_with(DUP_STAGE_PREFIX))["len"].sum()
    )
    total_con = int(
        rejections.filter(pl.col("stage").str.starts_with(CONTAM_STAGE_PREFIX))["len"].sum()
    )
    cards = [
        ("documents", f"{n_docs:,}"),
        ("cl100k tokens", f"{n_tokens:,}"),
        ("rejected", f"{n_rej:,}"),
        ("leaf nodes with documents", f"{covered:,} / {len(leaves):,}"),
        (
            "duplicate rate",
            _fmt_pct(total_dups / (n_docs + total_dups + total_con))
            if n_docs + total_dups + total_con
            else "–",
        ),
        (
            "contamination rate",
            _fmt_pct(total_con / (n_docs + total_con)) if n_docs + total_con else "–",
        ),
    ]
    if "cost_usd" in stats:
        cards.append(("cost (USD)", f"${float(stats['cost_usd']):,.4f}"))
    if "seconds" in stats:
        cards.append(("build time", f"{float(stats['seconds']):,.0f} s"))

    node_rows = [
        {
            "id": n.path.rpartition("/")[2],
            "name": n.name,
            "depth": n.depth,
            "documents": _fmt_int(n.documents),
            "tokens": _fmt_int(n.tokens),
            "duplicates": _fmt_int(n.duplicates),
            "dup_rate": _fmt_pct(n.dup_rate),
            "contaminated": _fmt_int(n.contaminated),
            "contam_rate": _fmt_pct(n.contam_rate),
            "rejected_other": _fmt_int(n.rejected_other),
            "gap": n.documents == 0,
            "planned": (
                _fmt_int(planned_units.get(n.path.rpartition("/")[2], 0))
                if planned_units is not None
                else None
            ),
        }
        for n in nodes.values()
    ]
    by_kind = facts.by_kind()
    opener_total_share = float(openers["share"].sum()) if openers.height else 0.0
    distinct = facts.distinct_openers if n_docs else 0
    if callable(diversity):  # computed meanwhile (``ReportStage``: on a thread)
        diversity = diversity()
    diversity_tables = [(title, Markup(table)) for title, table in _diversity_tables(diversity)]
    stage_keys: list[str] = []
    for v in stages.values():
        for k in v if isinstance(v, Mapping) else {}:
            if k not in stage_keys:
                stage_keys.append(k)
    cost_parts = []
    if stages:
        cost_parts.append(
            html_table(
                ["stage", *stage_keys],
                [[s, *[(v or {}).get(k) for k in stage_keys]] for s, v in stages.items()],
            )
        )
    totals = stat_totals(stats)
    if totals:
        cost_parts.append(html_table(["total", "value"], [[k, v] for k, v in totals.items()]))
    generation = stage_result(stats, "generate")
    if generation:
        cost_parts.append("<h3>Generation</h3>")
        cost_parts.append(html_table(["counter", "value"], [[k, v] for k, v in generation.items()]))
    if not cost_parts:
        cost_parts.append("<p>No cost or timing information was recorded for this run.</p>")

    run_name = str(manifest.get("run") or run.name)
    subtitle = (
        f"Run directory {run.name}"
        + (f", assembled {manifest['created_at']}" if manifest.get("created_at") else "")
        + (
            f", config hash {str(manifest['config_hash'])[:12]}"
            if manifest.get("config_hash")
            else ""
        )
        + (f", {counts.get('documents', n_docs):,} documents" if counts else "")
    )
    env = Environment(autoescape=True)
    html = env.from_string(_TEMPLATE).render(
        run=run_name,
        subtitle=subtitle,
        cards=cards,
        figure=figure,
        node_rows=node_rows,
        coverage_note=(
            f"{covered:,} of {len(leaves):,} leaf nodes have at least one document."
            + (
                " Nodes with none are hatched grey in the treemap and red in the table."
                if planned
                else ""
            )
        ),
        coverage_table=Markup(_frame_table(coverage)) if isinstance(coverage, pl.DataFrame) else "",
        has_planned=planned_units is not None,
        length_table=Markup(html_table(by_kind.columns, [list(r) for r in by_kind.iter_rows()])),
        rejection_table=Markup(
            html_table(["stage", "reason", "documents"], [list(r) for r in rej_counts.iter_rows()])
        ),
        rates_note=(
            f"{total_dups:,} duplicates and {total_con:,} contaminated documents were removed "
            "in total (stages whose name starts with 'dedup' and 'decontam')."
        ),
        diversity_tables=diversity_tables,
        openers_note=(
            f"{distinct:,} distinct openers over {n_docs:,} documents; the {openers.height} "
            f"most repeated below start {_fmt_pct(opener_total_share)} of all documents."
        ),
        opener_html=Markup(
            html_table(
                ["opener", "documents", "share"],
                [[o, n, _fmt_pct(s)] for o, n, s in openers.iter_rows()],
            )
        ),
        has_stages="stages" in plots,
        has_map="map" in plots,
        quality_html=Markup(quality_html),
        quality_note=(
            "Diversity per taxonomy node: compression ratio (higher = more repetitive), "
            "distinct-n (share of distinct word n-grams), mean pairwise embedding similarity "
            "and the Vendi score (effective number of distinct documents); semantic_dups "
            "counts semantic near-duplicates found after MinHash."
        ),
        cost_html=Markup("".join(cost_parts)),
    )
    path = run / REPORT_NAME
    atomic_write_bytes(path, html.encode("utf-8"))
    return path
