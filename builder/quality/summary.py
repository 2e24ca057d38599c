"""The quality and diversity summary of a run: data files, card section, report tables, map.

``QualitySummary`` holds what the gates measured: diversity per taxonomy node and for the
corpus (``builder.quality.metrics``), semantic near-duplicates per node, a 2-D map of
document embeddings, and counters of relevance, code checks and the judge. It is written to
``<run>/work/diversity/quality_*`` (Parquet + JSON) and read back by the card and the report,
which only render it.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

PREFIX = "quality"


@dataclass
class QualitySummary:
    """Per-node diversity (``nodes``), the embedding map (``map``) and counters (``summary``)."""

    nodes: pl.DataFrame
    map: pl.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)

    def write(self, outdir: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``quality_nodes.parquet``, ``quality_map.parquet`` and ``quality_summary.json``."""
        from builder.io_tables import write_parquet_atomic
        from builder.util.files import atomic_write_text

        out = Path(outdir)
        paths = {
            "nodes": write_parquet_atomic(self.nodes, out / f"{PREFIX}_nodes.parquet"),
            "map": write_parquet_atomic(self.map, out / f"{PREFIX}_map.parquet"),
        }
        paths["summary"] = out / f"{PREFIX}_summary.json"
        atomic_write_text(
            paths["summary"], json.dumps(self.summary, indent=2, sort_keys=True) + "\n"
        )
        return paths

    @classmethod
    def read(cls, outdir: str | os.PathLike[str]) -> QualitySummary:
        out = Path(outdir)
        return cls(
            nodes=pl.read_parquet(out / f"{PREFIX}_nodes.parquet"),
            map=pl.read_parquet(out / f"{PREFIX}_map.parquet"),
            summary=json.loads((out / f"{PREFIX}_summary.json").read_text(encoding="utf-8")),
        )

    @property
    def corpus(self) -> dict[str, Any]:
        rows = self.nodes.filter(pl.col("node") == "(all)").to_dicts()
        return rows[0] if rows else {}

    def to_markdown(self, max_nodes: int = 20) -> str:
        """The card's section: corpus diversity, gate counters, the least diverse nodes."""
        s = self.summary
        c = self.corpus
        lines = ["## Quality gates and diversity", ""]
        if s.get("embedder"):
            lines += [f"Embeddings: `{s['embedder']}`.", ""]
        if s.get("embedder_terms"):
            lines += [f"Terms of the embedding weights: {s['embedder_terms']}", ""]
        for key, label in (
            ("relevance", "Relevance"),
            ("code", "Code in prose"),
            ("judge", "Educational-value judge"),
            ("semantic", "Semantic near-duplicates"),
        ):
            if s.get(key):
                vals = "; ".join(f"{k}: {v}" for k, v in s[key].items())
                lines.append(f"- {label}: {vals}")
        if c:
            lines += [
                "",
                "Corpus diversity (lexical measures on a sample of at most "
                f"{s.get('sample', 2000)} documents per node): compression ratio "
                f"{_f(c.get('compression_ratio'))} (higher = more repetitive), distinct-1..4 "
                + " / ".join(_f(c.get(f"distinct_{n}")) for n in (1, 2, 3, 4))
                + f", mean pairwise embedding similarity {_f(c.get('mean_similarity'))}, "
                f"Vendi score {_f(c.get('vendi'))} (effective number of distinct documents "
                f"out of {c.get('docs')}).",
            ]
        nodes = self.nodes.filter(pl.col("node") != "(all)")
        if nodes.height:
            worst = nodes.sort("mean_similarity", descending=True, nulls_last=True).head(max_nodes)
            lines += [
                "",
                "| node | docs | compression | distinct-2 | mean similarity | Vendi |",
                "| --- | ---: | ---: | ---: | ---: | ---: |",
            ]
            for r in worst.iter_rows(named=True):
                lines.append(
                    f"| {r['node']} | {r['docs']} | {_f(r['compression_ratio'])} | "
                    f"{_f(r['distinct_2'])} | {_f(r['mean_similarity'])} | {_f(r['vendi'])} |"
                )
        return "\n".join(lines) + "\n"

    def map_png(self) -> bytes:
        """A scatter plot of the embedding map, one colour per discipline."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(10, 6.5), dpi=100)
        if self.map.height == 0:
            ax.text(0.5, 0.5, "no documents to map", ha="center", va="center")
            ax.set_axis_off()
        else:
            labels = sorted(set(self.map["label"].to_list()))
            cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
            for i, label in enumerate(labels):
                part = self.map.filter(pl.col("label") == label)
                ax.scatter(
                    part["x"].to_numpy(),
                    part["y"].to_numpy(),
                    s=14,
                    alpha=0.75,
                    color=cmap(i % cmap.N),
                    label=f"{label} ({part.height})",
                )
            ax.legend(loc="best", fontsize=9, frameon=True)
            ax.set_xlabel("principal component 1")
            ax.set_ylabel("principal component 2")
        ax.set_title("Documents by embedding (PCA), coloured by discipline")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        return buf.getvalue()


def _f(v: Any) -> str:
    if v is None:
        return "–"
    return f"{float(v):.3f}"
