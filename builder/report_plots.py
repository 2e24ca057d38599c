"""The report's plots: Matplotlib's Agg canvas directly (no pyplot, no global backend
switch), each figure returned as PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from builder.report_data import DocumentSummary, TreeNode, leaf_nodes

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

DPI = 100


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

    fig = _figure(12, 7.5)
    ax = fig.add_subplot()
    roots = [n for n in nodes.values() if n.parent is None]
    if not roots or (not planned and not any(n.documents for n in roots)):
        _no_data(ax, "no documents and no taxonomy")
        return _png(fig)
    leaves = leaf_nodes(nodes)
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

    # Rectangles are gathered and drawn as three collections (frames, filled leaves, empty
    # hatched leaves) in this order: one artist each instead of one patch per node, which
    # made this plot most of a small build's report time (~1,400 patches on the starter
    # taxonomy). Frames come in depth-first order, so a parent's frame lies under its
    # children's as before.
    frames: list[tuple[float, float, float, float, float]] = []  # x, y, w, h, linewidth
    filled: list[tuple[float, float, float, float, tuple]] = []  # x, y, w, h, colour
    empties: list[tuple[float, float, float, float]] = []

    def draw(node: TreeNode, x: float, y: float, w: float, h: float) -> None:
        if w <= 0.5 or h <= 0.5:
            return
        if node.children:
            frames.append((x, y, w, h, max(0.4, 2.2 - node.depth * 0.7)))
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
                    zorder=4,
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
        colour = None if empty else cmap(norm(max(node.documents, norm.vmin or 0)))
        if colour is None:
            empties.append((x, y, w, h))
        else:
            filled.append((x, y, w, h, colour))
        if w > 46 and h > 24:
            ink = "black"
            if colour is not None:
                r, g, b, _ = colour
                ink = "white" if (0.299 * r + 0.587 * g + 0.114 * b) < 0.5 else "black"
            size = 10 if w > 150 and h > 40 else 8 if w > 90 else 7
            ax.text(
                x + w / 2,
                y + h / 2,
                f"{_fit(node.name, w * 0.88 - 6, size)}\n{node.documents:,}",
                ha="center",
                va="center",
                fontsize=size,
                color=ink,
                clip_on=True,
                zorder=4,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5} if empty else None,
            )

    layout(roots, 0, 0, width, height)
    _rectangles(ax, frames, facecolor="#f7f7f7", edgecolor="#333333", zorder=1)
    _rectangles(ax, filled, edgecolor="white", linewidth=0.8, zorder=2)
    _rectangles(
        ax,
        empties,
        facecolor="#f1eded",
        edgecolor="white",
        linewidth=0.8,
        hatch="///",
        hatchcolor="#d9a3a3",
        zorder=3,
    )
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


def _rectangles(
    ax: Any,
    rects: Sequence[tuple],
    *,
    facecolor: str | None = None,
    edgecolor: str,
    linewidth: float | None = None,
    hatch: str | None = None,
    hatchcolor: str | None = None,
    zorder: float,
) -> None:
    """Add ``rects`` (``x, y, w, h`` then a line width when ``linewidth`` is None, or a
    face colour when ``facecolor`` is None) to ``ax`` as one collection."""
    if not rects:
        return
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    patches = [Rectangle((r[0], r[1]), r[2], r[3]) for r in rects]
    collection = PatchCollection(
        patches,
        facecolors=facecolor if facecolor is not None else [r[4] for r in rects],
        edgecolors=edgecolor,
        linewidths=linewidth if linewidth is not None else [r[4] for r in rects],
        zorder=zorder,
    )
    if hatch:
        collection.set_hatch(hatch)
    if hatchcolor:
        collection.set_hatchcolor(hatchcolor)
    ax.add_collection(collection, autolim=False)


def _fit(text: str, width: float, fontsize: float) -> str:
    """``text`` cut to what fits in ``width`` pixels at ``fontsize`` points (DejaVu Sans)."""
    chars = max(3, int(width / (fontsize * DPI / 72 * 0.6)))
    return text if len(text) <= chars else text[: chars - 1] + "…"


def plot_lengths(facts: DocumentSummary) -> bytes:
    """Histograms of words and cl100k tokens per document, stacked by kind."""
    fig = _figure(12, 4.5)
    axes = fig.subplots(1, 2)
    if not facts.documents:
        for ax in axes:
            _no_data(ax, "no documents")
        return _png(fig)
    kinds = facts.kinds
    for ax, column, label in ((axes[0], "words", "words"), (axes[1], "n_tokens", "tokens")):
        # Each distinct length once, weighted by its documents: the same bars as the lengths
        # of every document, from a table as small as the number of distinct lengths.
        counted = [facts.counted(column, k) for k in kinds]
        hi = max(float(facts.quantile(column, 0.995) or 1), 1.0)
        ax.hist(
            [values for values, _ in counted],
            bins=40,
            range=(0, hi),
            stacked=True,
            label=kinds,
            weights=[counts for _, counts in counted],
        )
        median = float(facts.median(column) or 0)
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
