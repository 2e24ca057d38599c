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
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from builder.assemble import (
    DOCUMENTS_DIR,
    MANIFEST_NAME,
    REJECTED_NAME,
    SHARD_GLOB,
    Source,
    to_lazy,
)
from builder.card import stage_result, stage_rows, stat_totals
from builder.tokens import count_tokens
from builder.util.files import atomic_write_bytes

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

REPORT_NAME = "report.html"
PLOTS_DIR = "report"
UNKNOWN_PATH = "(unknown)"
#: Rejection stages counted as duplicates / contamination (prefix match: dedup-exact, ...).
DUP_STAGE_PREFIX = "dedup"
CONTAM_STAGE_PREFIX = "decontam"
OPENER_TOP = 15
DPI = 100


# ---------------------------------------------------------------------------------------------
# Data


def _load(source: Source, default: Path | None, what: str) -> pl.LazyFrame | None:
    if source is not None:
        return to_lazy(source, what)
    if default is not None and default.exists():
        if default.is_dir() and not any(default.glob(SHARD_GLOB)):
            return None
        return to_lazy(default, what)
    return None


def _col(schema: pl.Schema, name: str, dtype: pl.DataType) -> pl.Expr:
    if name in schema:
        return pl.col(name).cast(dtype)
    return pl.lit(None, dtype).alias(name)


def _opener_expr(words: int) -> pl.Expr:
    """First ``words`` words of the text, lower-cased, markdown marks and punctuation gone."""
    return (
        pl.col("text")
        .str.slice(0, 400)
        .str.to_lowercase()
        .str.extract_all(r"[\p{L}\p{N}][\p{L}\p{N}'’-]*")
        .list.head(words)
        .list.join(" ")
    )


#: Path part of a syllabus session under its subject in the coverage tree.
SESSION_PREFIX = "session: "


def _path_expr(schema: pl.Schema) -> pl.Expr:
    """A row's coverage path: its taxonomy_path, and for a unit built around a syllabus
    session (GLAN) one level more, ``<subject path>/session: <title>``, so documents written
    from sessions show where they belong instead of only on the subject."""
    path = _col(schema, "taxonomy_path", pl.String).fill_null(UNKNOWN_PATH)
    if "session" not in schema:
        return path.alias("taxonomy_path")
    session = pl.col("session").cast(pl.String).str.replace_all("/", "\u2215")
    return (
        pl.when(session.is_not_null() & (session.str.strip_chars() != ""))
        .then(path + pl.lit("/" + SESSION_PREFIX) + session)
        .otherwise(path)
        .alias("taxonomy_path")
    )


def _is_session(path: str) -> bool:
    return path.rpartition("/")[2].startswith(SESSION_PREFIX)


def _leaves(nodes: Mapping[str, Any]) -> list[Any]:
    """Taxonomy leaves: nodes without children other than sessions (a subject walked by its
    syllabus sessions is still the leaf its topics hang under); sessions are not leaves."""
    return [
        n
        for n in nodes.values()
        if not _is_session(n.path) and not any(not _is_session(c) for c in n.children)
    ]


def document_facts(documents: pl.LazyFrame, opener_words: int = 4) -> pl.DataFrame:
    """Per document: path, kind, tokens, words and opener (the text itself is not kept).

    Documents of syllabus sessions get their session as a path level (``_path_expr``)."""
    schema = documents.collect_schema()
    exprs = [
        _col(schema, "id", pl.String),
        _path_expr(schema),
        _col(schema, "kind", pl.String).fill_null("(none)"),
        _col(schema, "n_tokens", pl.Int64),
        pl.col("text").str.count_matches(r"\S+").cast(pl.Int64).alias("words"),
        _opener_expr(opener_words).alias("opener"),
    ]
    if "text" in schema and "n_tokens" not in schema:
        exprs.append(pl.col("text"))
    facts = documents.select(exprs).collect(engine="streaming")  # never all texts at once
    if facts.height and facts["n_tokens"].null_count():
        # Frames from before assembly have no counts yet: count them here.
        missing = facts["n_tokens"].is_null()
        texts = documents.select("text").collect()["text"].filter(missing).to_list()
        filled = iter(count_tokens(texts))
        facts = facts.with_columns(
            pl.Series(
                "n_tokens",
                [next(filled) if m else v for v, m in zip(facts["n_tokens"], missing, strict=True)],
                pl.Int64,
            )
        )
    return facts.drop("text", strict=False)


def rejection_facts(rejected: pl.LazyFrame | None) -> pl.DataFrame:
    """Per rejected row: path, stage and reason."""
    empty = pl.DataFrame(
        schema={"taxonomy_path": pl.String, "stage": pl.String, "reason": pl.String}
    )
    if rejected is None:
        return empty
    schema = rejected.collect_schema()
    return rejected.select(
        _path_expr(schema),
        _col(schema, "stage", pl.String).fill_null("(none)"),
        _col(schema, "reason", pl.String).fill_null("(none)"),
    ).collect()


@dataclass
class TreeNode:
    """A node of the coverage tree, keyed by its id path (``a/b/c``)."""

    path: str
    name: str
    parent: str | None
    weight: float = 1.0
    children: list[str] = field(default_factory=list)
    in_taxonomy: bool = True
    documents: int = 0  # this node and every descendant
    tokens: int = 0
    duplicates: int = 0
    contaminated: int = 0
    rejected_other: int = 0

    @property
    def depth(self) -> int:
        return self.path.count("/")

    @property
    def dup_rate(self) -> float | None:
        entering = self.documents + self.duplicates + self.contaminated
        return self.duplicates / entering if entering else None

    @property
    def contam_rate(self) -> float | None:
        entering = self.documents + self.contaminated
        return self.contaminated / entering if entering else None


def _taxonomy_nodes(
    taxonomy: Any, subtrees: Sequence[str] = (), include_proposed: bool = False
) -> dict[str, TreeNode]:
    """Tree nodes from a ``builder.taxonomy.Taxonomy`` (duck-typed: iterable of nodes with id,
    name, parent, weight, status). Proposed nodes are left out unless ``include_proposed``
    (builds skip them by default); with ``subtrees`` (the walk's ``subtree`` ids) only those
    subtrees and their ancestors are kept, so a partial build is not drowned in gaps."""
    by_id = {n.id: n for n in taxonomy}
    paths: dict[str, str] = {}

    def path_of(node_id: str) -> str:
        if node_id not in paths:
            parent = by_id[node_id].parent
            paths[node_id] = node_id if parent is None else f"{path_of(parent)}/{node_id}"
        return paths[node_id]

    roots = [path_of(r) for r in subtrees if r in by_id]
    nodes: dict[str, TreeNode] = {}
    for node in by_id.values():
        if getattr(node, "status", "approved") == "proposed" and not include_proposed:
            continue
        path = path_of(node.id)
        if roots and not any(
            path == r or path.startswith(r + "/") or r.startswith(path + "/") for r in roots
        ):
            continue
        parent = path.rpartition("/")[0] or None
        nodes[path] = TreeNode(
            path=path,
            name=str(getattr(node, "name", node.id) or node.id),
            parent=parent,
            weight=float(getattr(node, "weight", 1.0) or 1.0),
        )
    if roots:  # an ancestor of a selected subtree shows only the selected branch
        keep = set(nodes)
        for path in list(nodes):
            parent = nodes[path].parent
            if parent is not None and parent not in keep:
                del nodes[path]
    return nodes


def _ensure(nodes: dict[str, TreeNode], path: str, names: Mapping[str, str]) -> TreeNode:
    """The node at ``path``, created (with its ancestors) when the data has a path that the
    (possibly restricted) taxonomy does not."""
    if path not in nodes:
        parent = path.rpartition("/")[0] or None
        if parent is not None:
            _ensure(nodes, parent, names)
        node_id = path.rpartition("/")[2]
        nodes[path] = TreeNode(path, names.get(node_id, node_id), parent, in_taxonomy=False)
    return nodes[path]


def node_table(
    facts: pl.DataFrame,
    rejections: pl.DataFrame,
    taxonomy: Any = None,
    *,
    subtrees: Sequence[str] = (),
    include_proposed: bool = False,
) -> dict[str, TreeNode]:
    """Coverage tree: taxonomy nodes (when given; see ``_taxonomy_nodes`` for ``subtrees`` and
    ``include_proposed``) plus every path seen in the data, with documents, tokens,
    duplicates and contamination summed up the tree. Ordered preorder."""
    nodes = _taxonomy_nodes(taxonomy, subtrees, include_proposed) if taxonomy is not None else {}
    own: dict[str, dict[str, int]] = {}
    if facts.height:
        for path, n, t in (
            facts.group_by("taxonomy_path").agg(pl.len(), pl.col("n_tokens").sum()).iter_rows()
        ):
            own.setdefault(path, {})["documents"] = n
            own[path]["tokens"] = int(t or 0)
    if rejections.height:
        kinds = (
            pl.when(pl.col("stage").str.starts_with(DUP_STAGE_PREFIX))
            .then(pl.lit("duplicates"))
            .when(pl.col("stage").str.starts_with(CONTAM_STAGE_PREFIX))
            .then(pl.lit("contaminated"))
            .otherwise(pl.lit("rejected_other"))
        )
        agg = rejections.group_by("taxonomy_path", kinds.alias("k")).len()
        for path, k, n in agg.iter_rows():
            own.setdefault(path, {})[k] = n
    names = {n.id: str(getattr(n, "name", n.id)) for n in taxonomy} if taxonomy is not None else {}
    for path in own:
        _ensure(nodes, path, names)
    for node in nodes.values():
        if node.parent is not None and node.parent in nodes:
            nodes[node.parent].children.append(node.path)
    for path, values in own.items():
        p: str | None = path
        while p is not None:
            node = nodes[p]
            for key, n in values.items():
                setattr(node, key, getattr(node, key) + n)
            p = node.parent
    ordered: dict[str, TreeNode] = {}

    def visit(path: str) -> None:
        ordered[path] = nodes[path]
        for child in nodes[path].children:
            visit(child)

    for root in [n.path for n in nodes.values() if n.parent is None]:
        visit(root)
    return ordered


def opener_table(facts: pl.DataFrame, top: int = OPENER_TOP) -> pl.DataFrame:
    """The ``top`` most common openers with their document count and share."""
    total = facts.height
    if not total:
        return pl.DataFrame(
            schema={"opener": pl.String, "documents": pl.UInt32, "share": pl.Float64}
        )
    return (
        facts.filter(pl.col("opener") != "")
        .group_by("opener")
        .agg(pl.len().alias("documents"))
        .filter(pl.col("documents") > 1)
        .sort(["documents", "opener"], descending=[True, False])
        .head(top)
        .with_columns((pl.col("documents") / total).alias("share"))
    )


# ---------------------------------------------------------------------------------------------
# Plots


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return fig


def _png(fig: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _no_data(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=13, color="#555555")
    ax.set_axis_off()


def squarify(sizes: Sequence[float], x: float, y: float, dx: float, dy: float) -> list[tuple]:
    """Squarified treemap layout (Bruls, Huizing & van Wijk 2000).

    ``sizes`` (positive, ideally sorted descending) are scaled to fill the rectangle
    ``(x, y, dx, dy)``; returns one ``(x, y, w, h)`` per size, in order.
    """
    total = float(sum(sizes))
    if not sizes or total <= 0 or dx <= 0 or dy <= 0:
        return [(x, y, 0.0, 0.0) for _ in sizes]
    areas = [s * dx * dy / total for s in sizes]
    rects: list[tuple] = []

    def worst(row: list[float], side: float) -> float:
        s = sum(row)
        return max(max(side * side * r / (s * s), s * s / (side * side * r)) for r in row)

    i = 0
    while i < len(areas):
        side = min(dx, dy)
        row = [areas[i]]
        j = i + 1
        while j < len(areas) and worst([*row, areas[j]], side) <= worst(row, side):
            row.append(areas[j])
            j += 1
        s = sum(row)
        if dx >= dy:  # a column on the left
            w = s / dy if dy else 0.0
            yy = y
            for a in row:
                h = a / w if w else 0.0
                rects.append((x, yy, w, h))
                yy += h
            x += w
            dx -= w
        else:  # a row at the bottom
            h = s / dx if dx else 0.0
            xx = x
            for a in row:
                w = a / h if h else 0.0
                rects.append((xx, y, w, h))
                xx += w
            y += h
            dy -= h
        i = j
    return rects


def plot_coverage(nodes: Mapping[str, TreeNode], *, planned: bool) -> bytes:
    """Treemap: area = planned share (taxonomy weights) or documents, colour = documents."""
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.patches import Rectangle

    fig = _figure(12, 7.5)
    ax = fig.add_subplot()
    roots = [n for n in nodes.values() if n.parent is None]
    if not roots or (not planned and not any(n.documents for n in roots)):
        _no_data(ax, "no documents and no taxonomy")
        return _png(fig)
    leaves = _leaves(nodes)
    max_docs = max((n.documents for n in leaves), default=0)
    cmap = colormaps["viridis"]
    nonzero = [n.documents for n in leaves if n.documents]
    spread = max_docs / min(nonzero) if nonzero else 1.0
    # A log scale only when counts span orders of magnitude; otherwise linear from 0.
    norm = LogNorm(min(nonzero), max_docs) if spread > 30 else Normalize(0, max(max_docs, 1))
    width, height = 1200.0, 750.0 * 0.88  # layout units ~ pixels of the axes

    def area(n: TreeNode) -> float:
        return n.weight if planned else float(n.documents)

    def layout(children: list[TreeNode], x: float, y: float, w: float, h: float) -> None:
        kids = [c for c in children if area(c) > 0]
        total = sum(area(c) for c in kids) or 1.0
        kids.sort(key=lambda c: (-area(c), c.path))
        for node, (rx, ry, rw, rh) in zip(
            kids, squarify([area(c) / total for c in kids], x, y, w, h), strict=True
        ):
            draw(node, rx, ry, rw, rh)

    def draw(node: TreeNode, x: float, y: float, w: float, h: float) -> None:
        if w <= 0.5 or h <= 0.5:
            return
        if node.children:
            ax.add_patch(
                Rectangle(
                    (x, y),
                    w,
                    h,
                    facecolor="#f7f7f7",
                    edgecolor="#333333",
                    linewidth=max(0.4, 2.2 - node.depth * 0.7),
                )
            )
            header = 16.0 if h > 60 and w > 40 else 0.0
            if header:
                ax.text(
                    x + 4,
                    y + h - 3,
                    _fit(
                        node.name,
                        w * (0.8 if node.depth == 0 else 0.88) - 8,
                        9 if node.depth == 0 else 8,
                    ),
                    ha="left",
                    va="top",
                    fontsize=9 if node.depth == 0 else 8,
                    fontweight="bold" if node.depth == 0 else "normal",
                    clip_on=True,
                )
            pad = 3.0 if min(w, h) > 20 else 0.0
            layout(
                [nodes[c] for c in node.children],
                x + pad,
                y + pad,
                w - 2 * pad,
                h - 2 * pad - header,
            )
            return
        empty = node.documents == 0
        ax.add_patch(
            Rectangle(
                (x, y),
                w,
                h,
                facecolor="#f1eded" if empty else cmap(norm(max(node.documents, norm.vmin or 0))),
                edgecolor="white",
                hatch="///" if empty else None,
                hatchcolor="#d9a3a3",
                linewidth=0.8,
            )
        )
        if w > 46 and h > 24:
            colour = "black"
            if not empty:
                r, g, b, _ = cmap(norm(max(node.documents, norm.vmin or 0)))
                colour = "white" if (0.299 * r + 0.587 * g + 0.114 * b) < 0.5 else "black"
            size = 10 if w > 150 and h > 40 else 8 if w > 90 else 7
            ax.text(
                x + w / 2,
                y + h / 2,
                f"{_fit(node.name, w * 0.88 - 6, size)}\n{node.documents:,}",
                ha="center",
                va="center",
                fontsize=size,
                color=colour,
                clip_on=True,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5} if empty else None,
            )

    layout(roots, 0, 0, width, height)
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_axis_off()
    from matplotlib.cm import ScalarMappable

    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, shrink=0.8, pad=0.01)
    cbar.set_label("documents")
    title = "Coverage: area = planned share, colour = documents"
    if planned:
        title += " (hatched grey = no documents)"
    else:
        title = "Coverage: area and colour = documents"
    ax.set_title(title, fontsize=12)
    return _png(fig)


def _fit(text: str, width: float, fontsize: float) -> str:
    """``text`` cut to what fits in ``width`` pixels at ``fontsize`` points (DejaVu Sans)."""
    chars = max(3, int(width / (fontsize * DPI / 72 * 0.6)))
    return text if len(text) <= chars else text[: chars - 1] + "…"


def plot_lengths(facts: pl.DataFrame) -> bytes:
    """Histograms of words and cl100k tokens per document, stacked by kind."""
    fig = _figure(12, 4.5)
    axes = fig.subplots(1, 2)
    if not facts.height:
        for ax in axes:
            _no_data(ax, "no documents")
        return _png(fig)
    kinds = sorted(facts["kind"].unique().to_list())
    for ax, column, label in ((axes[0], "words", "words"), (axes[1], "n_tokens", "tokens")):
        data = [facts.filter(pl.col("kind") == k)[column].drop_nulls().to_numpy() for k in kinds]
        hi = max(float(facts[column].quantile(0.995) or 1), 1.0)
        ax.hist(data, bins=40, range=(0, hi), stacked=True, label=kinds)
        median = float(facts[column].median() or 0)
        ax.axvline(median, color="#c0392b", linestyle="--", linewidth=1)
        ax.text(
            median,
            ax.get_ylim()[1] * 0.95,
            f" median {median:,.0f}",
            color="#c0392b",
            va="top",
            fontsize=9,
        )
        ax.set_xlabel(f"{label} per document")
        ax.set_ylabel("documents")
        ax.set_title(f"{label.capitalize()} per document")
        ax.grid(axis="y", alpha=0.3)
    axes[1].legend(title="kind", fontsize=8)
    return _png(fig)


def plot_bars(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    title: str,
    xlabel: str,
    empty: str,
    colors: Sequence[str] | None = None,
    fmt: str = "{:,.0f}",
) -> bytes:
    """Horizontal bar chart, largest on top, each bar labelled with its value."""
    n = len(labels)
    fig = _figure(12, max(2.6, 0.9 + 0.32 * n))
    ax = fig.add_subplot()
    if not n:
        _no_data(ax, empty)
        return _png(fig)
    ys = list(range(n))[::-1]
    ax.barh(ys, values, color=colors or "#2c7fb8")
    ax.set_yticks(ys, [_fit(lab, 480, 9) for lab in labels], fontsize=9)
    for yv, v in zip(ys, values, strict=True):
        ax.text(v, yv, " " + fmt.format(v), va="center", fontsize=8)
    ax.set_xlim(0, max(values) * 1.15 if max(values) > 0 else 1)
    if all(float(v).is_integer() for v in values):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def plot_rates(nodes: Sequence[TreeNode]) -> bytes:
    """Duplicate and contamination rates (percent) of the nodes with the highest rates."""
    fig = _figure(12, max(2.6, 1.0 + 0.36 * len(nodes)))
    ax = fig.add_subplot()
    if not nodes:
        _no_data(ax, "no duplicates or contamination found")
        return _png(fig)
    ys = list(range(len(nodes)))[::-1]
    dup = [100 * (n.dup_rate or 0) for n in nodes]
    con = [100 * (n.contam_rate or 0) for n in nodes]
    ax.barh([y + 0.2 for y in ys], dup, height=0.4, label="duplicate rate", color="#e6550d")
    ax.barh([y - 0.2 for y in ys], con, height=0.4, label="contamination rate", color="#756bb1")
    ax.set_yticks(ys, [_fit(f"{n.name} ({n.path})", 480, 9) for n in nodes], fontsize=9)
    ax.set_xlabel("% of the node's documents removed")
    ax.set_title("Duplicate and contamination rates per node (highest first)")
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


# ---------------------------------------------------------------------------------------------
# HTML

_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Corpus report: {{ run }}</title>
<style>
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif;
       margin: 0; color: #1d1d1f; background: #fafafa; }
main { max-width: 1240px; margin: 0 auto; padding: 18px 28px 60px; }
h1 { font-size: 26px; margin: 10px 0 4px; }
h2 { font-size: 20px; margin: 34px 0 8px; border-bottom: 2px solid #ddd; padding-bottom: 4px; }
.sub { color: #666; margin: 0 0 14px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 14px 0; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 10px 14px;
        min-width: 140px; }
.card b { display: block; font-size: 21px; }
.card span { color: #666; font-size: 13px; }
figure { margin: 10px 0; background: #fff; border: 1px solid #ddd; border-radius: 8px;
         padding: 8px; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { color: #555; font-size: 13px; padding: 4px 6px 0; }
table { border-collapse: collapse; background: #fff; font-size: 13.5px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fbfbfb; }
tr.gap td { background: #fdecea; }
.warn { background: #fff4e5; border: 1px solid #f0b37e; padding: 8px 12px; border-radius: 6px; }
#plot-error { display: none; }
details summary { cursor: pointer; color: #2c5f8a; margin: 6px 0; }
code { background: #f0f0f0; padding: 0 3px; border-radius: 3px; }
</style>
</head>
<body>
<main>
<h1>Corpus report: {{ run }}</h1>
<p class="sub">{{ subtitle }}</p>
<p id="plot-error" class="warn">Some plots failed to load in this browser; the PNG copies are in
<code>report/</code> next to this file.</p>
<div class="cards">
{% for label, value in cards %}<div class="card"><b>{{ value }}</b><span>{{ label }}</span></div>
{% endfor %}</div>

<h2 id="coverage">Coverage per taxonomy node</h2>
<p>{{ coverage_note }}</p>
{{ figure("coverage") }}
<details{% if node_rows|length <= 60 %} open{% endif %}><summary>Table: {{ node_rows|length }}
nodes (documents and tokens include every descendant; red rows have no documents)</summary>
<table>
<tr><th>node</th><th>name</th><th>documents</th><th>tokens</th><th>duplicates removed</th>
<th>dup. rate</th><th>contaminated removed</th><th>contam. rate</th><th>other rejections</th>
{% if has_planned %}<th>units planned</th>{% endif %}</tr>
{% for r in node_rows %}<tr{% if r.gap %} class="gap"{% endif %}>
<td style="padding-left: {{ 8 + 16 * r.depth }}px">{{ r.id }}</td><td>{{ r.name }}</td>
<td class="n">{{ r.documents }}</td><td class="n">{{ r.tokens }}</td>
<td class="n">{{ r.duplicates }}</td><td class="n">{{ r.dup_rate }}</td>
<td class="n">{{ r.contaminated }}</td><td class="n">{{ r.contam_rate }}</td>
<td class="n">{{ r.rejected_other }}</td>
{% if has_planned %}<td class="n">{{ r.planned }}</td>{% endif %}</tr>
{% endfor %}</table></details>
{% if coverage_table %}<h3>Planned coverage (walker)</h3>{{ coverage_table }}{% endif %}

<h2 id="lengths">Length and token distributions</h2>
{{ figure("tokens") }}
{{ length_table }}

<h2 id="rejections">Rejection reasons</h2>
{{ figure("rejections") }}
{{ rejection_table }}

<h2 id="duplicates">Duplicate and contamination rates per node</h2>
<p>{{ rates_note }}</p>
{{ figure("duplicates") }}
{% for title, table in diversity_tables %}<details><summary>{{ title }}</summary>{{ table }}
</details>{% endfor %}

<h2 id="openers">Repeated openers</h2>
<p>{{ openers_note }}</p>
{{ figure("openers") }}
{{ opener_html }}

{% if quality_html %}<h2 id="quality">Quality gates and diversity</h2>
<p>{{ quality_note }}</p>
{% if has_map %}{{ figure("map") }}{% endif %}
{{ quality_html }}{% endif %}

<h2 id="cost">Cost and time per stage</h2>
{% if has_stages %}{{ figure("stages") }}{% endif %}
{{ cost_html }}
</main>
<script>
(function () {
  var imgs = document.querySelectorAll("img.plot"), done = 0, bad = 0;
  function check(img) {
    img.setAttribute("data-natural-width", img.naturalWidth);
    img.setAttribute("data-natural-height", img.naturalHeight);
    done += 1;
    if (!img.naturalWidth) {
      bad += 1;
      document.getElementById("plot-error").style.display = "block";
    }
    document.body.setAttribute("data-plots-checked", String(done));
    document.body.setAttribute("data-plots-broken", String(bad));
  }
  imgs.forEach(function (img) {
    if (img.complete) { check(img); return; }
    img.addEventListener("load", function () { check(img); });
    img.addEventListener("error", function () { check(img); });
  });
})();
</script>
</body>
</html>
"""


def _fmt_int(n: Any) -> str:
    return "" if n is None else f"{int(n):,}"


def _fmt_pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _fmt_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, Mapping):
        return "; ".join(f"{k}: {_fmt_value(x)}" for k, x in v.items())
    if isinstance(v, list | tuple):
        return ", ".join(_fmt_value(x) for x in v)
    return str(v)


def html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An escaped HTML table; numbers right-aligned."""
    from markupsafe import escape

    out = ["<table><tr>", *(f"<th>{escape(h)}</th>" for h in headers), "</tr>"]
    for row in rows:
        out.append("<tr>")
        for v in row:
            numeric = isinstance(v, int | float) and not isinstance(v, bool)
            cls = ' class="n"' if numeric else ""
            out.append(f"<td{cls}>{escape(_fmt_value(v))}</td>")
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def _frame_table(df: pl.DataFrame, limit: int = 200) -> str:
    return html_table(df.columns, [list(r) for r in df.head(limit).iter_rows()])


_DIVERSITY_TITLES = {
    "summary": "Diversity summary (dedup stage)",
    "nodes": "Duplicate and contamination rates per node (dedup stage)",
    "openers": "Repeated openers and first sentences (dedup stage)",
    "cluster_sizes": "Duplicate cluster sizes",
}


def _diversity_tables(diversity: Any) -> list[tuple[str, str]]:
    """(title, HTML table) for each table of the dedup stage's diversity report."""
    if diversity is None:
        return []
    if isinstance(diversity, Mapping):
        items = dict(diversity)
    else:
        items = {
            name: getattr(diversity, name)
            for name in ("summary", "nodes", "openers", "cluster_sizes")
            if hasattr(diversity, name)
        }
    out = []
    for name, value in items.items():
        title = _DIVERSITY_TITLES.get(name, f"Diversity: {name}")
        if isinstance(value, pl.DataFrame):
            more = f" (first 200 of {value.height:,} rows)" if value.height > 200 else ""
            out.append((title + more, _frame_table(value)))
        elif isinstance(value, Mapping) and value:
            out.append((title, html_table(["metric", "value"], [[k, v] for k, v in value.items()])))
    return out


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
) -> Path:
    """Write ``<run_dir>/report.html`` and the PNG plots in ``<run_dir>/report/``.

    ``quality`` (``builder.quality.summary.QualitySummary``) adds a diversity table per node
    and a 2-D map of the document embeddings coloured by discipline.

    ``documents`` / ``rejected`` default to the run's shards and ``rejected.parquet``;
    ``stats`` and ``manifest`` default to the run's ``manifest.json`` (and its ``stats``).
    ``taxonomy`` (a ``builder.taxonomy.Taxonomy``) adds node names, planned shares and the
    nodes that got no documents (limited to the config's ``walk.subtree`` when set).
    ``coverage`` is the walker's ``Coverage`` (adds a "units planned" column per node) or a
    frame shown as a table; ``diversity`` (``builder.diversity.DiversityReport``, or a dict
    of name -> frame plus an optional ``summary`` dict) is shown as extra tables. Returns the
    path of ``report.html``.
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

    docs_lf = _load(documents, run / DOCUMENTS_DIR, "documents")
    rej_lf = _load(rejected, run / REJECTED_NAME, "rejected")
    facts = (
        document_facts(docs_lf, opener_words)
        if docs_lf is not None
        else document_facts(
            pl.LazyFrame(schema={"text": pl.String, "taxonomy_path": pl.String}), opener_words
        )
    )
    rejections = rejection_facts(rej_lf)
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
        .len()
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
    n_docs = facts.height
    n_tokens = int(facts["n_tokens"].sum() or 0)
    n_rej = rejections.height
    leaves = _leaves(nodes)
    covered = sum(1 for n in leaves if n.documents)
    total_dups = int((rejections["stage"].str.starts_with(DUP_STAGE_PREFIX)).sum())
    total_con = int((rejections["stage"].str.starts_with(CONTAM_STAGE_PREFIX)).sum())
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
    by_kind = (
        facts.group_by("kind")
        .agg(
            pl.len().alias("documents"),
            pl.col("n_tokens").sum().alias("tokens"),
            pl.col("n_tokens").median().alias("median tokens"),
            pl.col("n_tokens").quantile(0.05).alias("p5 tokens"),
            pl.col("n_tokens").quantile(0.95).alias("p95 tokens"),
            pl.col("words").median().alias("median words"),
        )
        .sort("kind")
    )
    opener_total_share = float(openers["share"].sum()) if openers.height else 0.0
    distinct = facts["opener"].n_unique() if n_docs else 0
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
