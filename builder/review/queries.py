"""What the review pages read from a run directory: Polars lazy scans with predicates pushed
down into the Parquet reader.

A run directory holds the corpus as ``documents/part-*.parquet`` (sorted by id) and every
dropped document in ``rejected.parquet``. A page never reads a whole file: a document list
filters on a few small columns, counts, and materialises one page of rows with a preview of
the text; a document is found by id, which row-group statistics skip to (shards are sorted by
id). So a list over a million documents answers in a fraction of a second
(``bench/review.py``), where reading everything first takes seconds and gigabytes.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import polars as pl

from builder.review.flags import load_flags

__all__ = [
    "FACETS",
    "DocFilter",
    "NodeStats",
    "Page",
    "RunData",
]

DOCUMENTS_GLOB = "documents/part-*.parquet"
REJECTED_FILE = "rejected.parquet"
#: Filterable string columns, in the order the filter form shows them.
FACETS: tuple[str, ...] = ("kind", "template", "audience", "style")
#: Columns a document list shows (the text only as a preview).
LIST_COLUMNS: tuple[str, ...] = (
    "id",
    "kind",
    "topic",
    "template",
    "audience",
    "style",
    "verified",
    "n_tokens",
)
PREVIEW_CHARS = 160
STATUSES = ("all", "kept", "rejected")
VERIFIED = ("true", "false", "null")


@dataclass(frozen=True)
class DocFilter:
    """A document filter as the URL carries it. ``path`` is the taxonomy path of the chosen
    node (its subtree is included); ``score`` names a score column bounded by
    ``min_score``/``max_score``; ``reason`` applies to rejected documents only."""

    node: str = ""
    path: str = ""
    kind: str = ""
    template: str = ""
    audience: str = ""
    style: str = ""
    verified: str = ""
    status: str = "all"
    reason: str = ""
    score: str = ""
    min_score: float | None = None
    max_score: float | None = None

    def query(self, **overrides: Any) -> dict[str, str]:
        """The filter as URL query parameters (empty values left out)."""
        data = {**asdict(self), **overrides}
        data.pop("path", None)
        return {k: str(v) for k, v in data.items() if v not in ("", None)}

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "path"]

    def describe(self) -> str:
        """One line naming every active condition (for the flag confirmation)."""
        parts = [f"{k}={v}" for k, v in self.query().items() if k != "status"]
        return ", ".join(parts) or "no conditions"


@dataclass
class Page:
    """One page of a document list and how many documents match in all."""

    rows: list[dict[str, Any]]
    total: int
    offset: int
    limit: int


@dataclass
class NodeStats:
    """Per-node totals over the node's subtree."""

    documents: int = 0
    tokens: int = 0
    rejected: int = 0
    duplicates: int = 0
    flagged: int = 0
    score_sums: dict[str, float] = field(default_factory=dict)
    score_counts: dict[str, int] = field(default_factory=dict)

    @property
    def generated(self) -> int:
        return self.documents + self.rejected

    @property
    def rejection_rate(self) -> float | None:
        return self.rejected / self.generated if self.generated else None

    @property
    def duplicate_rate(self) -> float | None:
        return self.duplicates / self.generated if self.generated else None

    def scores(self) -> dict[str, float]:
        return {
            k: self.score_sums[k] / n
            for k, n in self.score_counts.items()
            if n and k in self.score_sums
        }


def _is_score(name: str, dtype: pl.DataType) -> bool:
    return dtype.is_numeric() and (
        "score" in name or name.startswith("quality") or name == "relevance"
    )


class RunData:
    """Lazy, cached access to one run directory's documents and rejections.

    Scans are rebuilt when the files change (a ``corpus build`` while the app is open), keyed
    by their modification times, so pages always show the files as they are.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self._stamp: tuple[Any, ...] | None = None
        self._cache: dict[str, Any] = {}

    # -- files ---------------------------------------------------------------------------

    def _shards(self) -> list[Path]:
        return sorted(self.run_dir.glob(DOCUMENTS_GLOB))

    def _stamp_now(self) -> tuple[Any, ...]:
        paths = [*self._shards(), self.run_dir / REJECTED_FILE, self.run_dir / "flags.jsonl"]
        out = []
        for p in paths:
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out.append((p.name, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def _cached(self, key: str, make: Any) -> Any:
        stamp = self._stamp_now()
        if stamp != self._stamp:
            self._stamp = stamp
            self._cache.clear()
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def documents(self) -> pl.LazyFrame | None:
        """The corpus shards as one lazy frame (None when the run has no shards yet)."""
        shards = self._shards()
        return pl.scan_parquet(shards) if shards else None

    def rejected(self) -> pl.LazyFrame | None:
        path = self.run_dir / REJECTED_FILE
        return pl.scan_parquet(path) if path.exists() else None

    def frame(self, which: str) -> pl.LazyFrame | None:
        return self.documents() if which == "kept" else self.rejected()

    def schema(self, which: str) -> dict[str, pl.DataType]:
        def make() -> dict[str, pl.DataType]:
            lf = self.frame(which)
            return dict(lf.collect_schema()) if lf is not None else {}

        return self._cached(f"schema:{which}", make)

    def score_columns(self) -> list[str]:
        """Numeric columns that hold quality scores (``*score*``, ``quality*``, ``relevance``)."""
        return [n for n, t in self.schema("kept").items() if _is_score(n, t)]

    def facet_values(self) -> dict[str, list[str]]:
        """Distinct values of each facet column and of rejection reasons (for the form)."""

        def make() -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            for col in FACETS:
                values: set[str] = set()
                for which in ("kept", "rejected"):
                    lf = self.frame(which)
                    if lf is not None and col in self.schema(which):
                        got = lf.select(pl.col(col).cast(pl.String).unique()).collect()
                        values.update(v for v in got[col].to_list() if v is not None)
                out[col] = sorted(values)
            rej = self.rejected()
            reasons: list[str] = []
            if rej is not None and "reason" in self.schema("rejected"):
                got = rej.select(pl.col("reason").unique()).collect()
                reasons = sorted(v for v in got["reason"].to_list() if v is not None)
            out["reason"] = reasons
            return out

        return self._cached("facets", make)

    # -- filters -------------------------------------------------------------------------

    def _predicate(self, filt: DocFilter, which: str) -> pl.Expr | None:
        schema = self.schema(which)
        conds: list[pl.Expr] = []
        if filt.path:
            if "taxonomy_path" not in schema:
                return pl.lit(False)
            col = pl.col("taxonomy_path")
            conds.append((col == filt.path) | col.str.starts_with(filt.path + "/"))
        for name in FACETS:
            value = getattr(filt, name)
            if value:
                if name not in schema:
                    return pl.lit(False)
                conds.append(pl.col(name) == value)
        if filt.verified:
            if "verified" not in schema:
                return pl.lit(False)
            col = pl.col("verified")
            conds.append(
                col.is_null() if filt.verified == "null" else col == (filt.verified == "true")
            )
        if filt.reason and which == "rejected":
            conds.append(pl.col("reason") == filt.reason)
        if filt.score and (filt.min_score is not None or filt.max_score is not None):
            if filt.score not in schema:
                return pl.lit(False)
            if filt.min_score is not None:
                conds.append(pl.col(filt.score) >= filt.min_score)
            if filt.max_score is not None:
                conds.append(pl.col(filt.score) <= filt.max_score)
        if not conds:
            return None
        expr = conds[0]
        for c in conds[1:]:
            expr = expr & c
        return expr

    def _filtered(self, filt: DocFilter, which: str) -> pl.LazyFrame | None:
        lf = self.frame(which)
        if lf is None:
            return None
        if which == "kept" and filt.reason:
            return None  # a rejection reason selects rejected documents only
        pred = self._predicate(filt, which)
        return lf if pred is None else lf.filter(pred)

    def count(self, filt: DocFilter, which: str) -> int:
        lf = self._filtered(filt, which)
        return 0 if lf is None else int(lf.select(pl.len()).collect().item())

    def page(self, filt: DocFilter, which: str, offset: int = 0, limit: int = 50) -> Page:
        """One page of the ``which`` ("kept" | "rejected") documents matching ``filt``,
        in id order, with a text preview; plus the total that match."""
        lf = self._filtered(filt, which)
        if lf is None:
            return Page([], 0, offset, limit)
        schema = self.schema(which)
        cols = [c for c in LIST_COLUMNS if c in schema]
        if which == "rejected":
            cols += [c for c in ("stage", "reason", "detail") if c in schema]
        cols += [c for c in self.score_columns() if c in schema and c not in cols]
        exprs: list[pl.Expr] = [pl.col(c) for c in cols]
        if "text" in schema:
            exprs.append(pl.col("text").str.slice(0, PREVIEW_CHARS).alias("preview"))
        # Two passes. First the page's ids, reading only the filter columns and ``id``;
        # then those rows in full. Files are sorted by id, so the id range of one page
        # touches one or two row groups, which Parquet statistics find: reading ``text``
        # for every filtered row instead costs ~8x more on a 1M-document run (bench/review.py).
        ids = lf.select("id").slice(offset, limit).collect()["id"]
        rows: list[dict[str, Any]] = []
        if len(ids):
            base = self.frame(which)
            if base is None:  # the files went away between the two passes
                return Page([], 0, offset, limit)
            lo, hi = ids.min(), ids.max()
            in_range = (pl.col("id") >= lo) & (pl.col("id") <= hi)
            fetched = base.filter(in_range).filter(pl.col("id").is_in(ids.unique().implode()))
            pred = self._predicate(filt, which)
            if pred is not None:
                fetched = fetched.filter(pred)
            rows = (
                fetched.select(exprs)
                .sort("id", maintain_order=True)
                .head(limit)
                .collect()
                .to_dicts()
            )
        total = self.count(filt, which)
        return Page(rows, total, offset, limit)

    def matching_ids(self, filt: DocFilter) -> list[str]:
        """Ids of every corpus (kept) document matching ``filt``: what "flag all" flags."""
        lf = self._filtered(filt, "kept")
        if lf is None:
            return []
        return lf.select("id").collect()["id"].to_list()

    def document(self, doc_id: str) -> tuple[str, dict[str, Any]] | None:
        """("kept" | "rejected", row) of the document ``doc_id``, or None."""
        for which in ("kept", "rejected"):
            lf = self.frame(which)
            if lf is None:
                continue
            rows = lf.filter(pl.col("id") == doc_id).collect().to_dicts()
            if rows:
                if which == "rejected" and len(rows) > 1:
                    rows[0]["also_rejected"] = [
                        {k: r.get(k) for k in ("stage", "reason", "detail")} for r in rows[1:]
                    ]
                return which, rows[0]
        return None

    # -- per-node statistics -------------------------------------------------------------

    def node_stats(self) -> dict[str, NodeStats]:
        """Totals per taxonomy node id, summed over each node's subtree.

        Every document's ``taxonomy_path`` (ids from the discipline down, joined by '/')
        adds to each node on it. Duplicates are documents rejected by the ``dedup`` stage.
        """

        def make() -> dict[str, NodeStats]:
            stats: dict[str, NodeStats] = {}

            def bump(path: str | None) -> list[NodeStats]:
                if not path:
                    return []
                return [stats.setdefault(i, NodeStats()) for i in path.split("/")]

            docs = self.documents()
            schema = self.schema("kept")
            flags = load_flags(self.run_dir)
            if docs is not None and "taxonomy_path" in schema:
                scores = self.score_columns()
                aggs = [pl.len().alias("n")]
                if "n_tokens" in schema:
                    aggs.append(pl.col("n_tokens").sum().alias("tokens"))
                if flags:
                    aggs.append(pl.col("id").is_in(list(flags)).sum().alias("flagged"))
                for s in scores:
                    aggs.append(pl.col(s).sum().alias(f"sum:{s}"))
                    aggs.append(pl.col(s).count().alias(f"count:{s}"))
                for row in docs.group_by("taxonomy_path").agg(aggs).collect().iter_rows(named=True):
                    for st in bump(row["taxonomy_path"]):
                        st.documents += row["n"]
                        st.tokens += int(row.get("tokens") or 0)
                        st.flagged += int(row.get("flagged") or 0)
                        for s in scores:
                            st.score_sums[s] = st.score_sums.get(s, 0.0) + float(
                                row[f"sum:{s}"] or 0.0
                            )
                            st.score_counts[s] = st.score_counts.get(s, 0) + int(row[f"count:{s}"])
            rej = self.rejected()
            rschema = self.schema("rejected")
            if rej is not None and "taxonomy_path" in rschema:
                # A document rejected by two stages is one rejected document.
                agg = (
                    rej.group_by("taxonomy_path", "id")
                    .agg((pl.col("stage") == "dedup").any().alias("dup"))
                    .group_by("taxonomy_path")
                    .agg(pl.len().alias("n"), pl.col("dup").sum().alias("dups"))
                    .collect()
                )
                for row in agg.iter_rows(named=True):
                    for st in bump(row["taxonomy_path"]):
                        st.rejected += row["n"]
                        st.duplicates += int(row["dups"] or 0)
            return stats

        return self._cached("node_stats", make)

    def totals(self) -> dict[str, int]:
        """Documents and rejections in the whole run."""

        def make() -> dict[str, int]:
            docs, rej = self.documents(), self.rejected()
            out = {"documents": 0, "tokens": 0, "rejected": 0}
            if docs is not None:
                row = docs.select(
                    pl.len().alias("n"),
                    (
                        pl.col("n_tokens").sum() if "n_tokens" in self.schema("kept") else pl.lit(0)
                    ).alias("t"),
                ).collect()
                out["documents"] = int(row["n"][0])
                out["tokens"] = int(row["t"][0] or 0)
            if rej is not None:
                out["rejected"] = int(rej.select(pl.col("id").n_unique()).collect().item())
            return out

        return self._cached("totals", make)
