"""Diversity report: duplicate and contamination rates per taxonomy node, repeated openers,
cluster sizes.

Synthetic corpora fail quietly by repeating themselves: the same opening sentence in every
section ("In this section, we will explore..."), whole topics regenerated nearly verbatim,
benchmark passages echoed back. This module measures that per taxonomy node so a curator
sees *where* it happens. Inputs are the corpus rows before dedup (a DataFrame or LazyFrame
with an id and a text column, optionally ``taxonomy_path``), the dedup ``clusters`` table
and the decontamination ``hits`` table; outputs are small Polars tables written as Parquet.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from builder.io_tables import write_parquet_atomic
from builder.util.files import atomic_write_text

ALL_NODE = "(all)"
_FIRST_CHARS = 400  # openers are taken from the first characters only (cheap on big texts)
#: Rows per batch of ``diversity_report`` when none is given (``[run] partition_rows``).
BATCH_ROWS = 20_000


def opener_exprs(text_column: str = "text", words: int = 5) -> list[pl.Expr]:
    """Expressions for ``first_words`` (first ``words`` normalised words) and
    ``first_sentence`` (lowercased, whitespace collapsed, up to the first . ! ? or newline,
    at most 200 characters). Empty texts give nulls."""
    head = pl.col(text_column).fill_null("").str.slice(0, _FIRST_CHARS).str.to_lowercase()
    first_words = head.str.extract_all(r"\w+").list.head(words).list.join(" ").alias("first_words")
    sentence = (
        head.str.strip_chars()
        .str.extract(r"^([^\n]*?[.!?])(?:\s|$)", 1)
        .fill_null(head.str.strip_chars().str.extract(r"^([^\n]*)", 1))
        .str.replace_all(r"\s+", " ")
        .str.slice(0, 200)
        .alias("first_sentence")
    )
    return [
        pl.when(first_words == "").then(None).otherwise(first_words).alias("first_words"),
        pl.when(sentence == "").then(None).otherwise(sentence).alias("first_sentence"),
    ]


def _path_string(frame: pl.DataFrame, path_column: str) -> pl.Expr:
    """A row's taxonomy path as one string: a path given as a list of names (["Physics",
    "Mechanics"]) is "/"-joined, another type cast."""
    column = pl.col(path_column)
    dtype = frame.schema[path_column]
    if isinstance(dtype, pl.List | pl.Array):
        return column.cast(pl.List(pl.String)).list.join("/")
    return column.cast(pl.String) if dtype != pl.String else column


def expand_nodes(frame: pl.DataFrame, path_column: str = "taxonomy_path") -> pl.DataFrame:
    """One row per (row, node) for every ancestor-or-self node of each row's taxonomy path,
    plus the ``(all)`` node. Node names are path prefixes such as ``math/calculus``."""
    base = frame.with_columns(pl.lit(ALL_NODE).alias("node"), pl.lit(0).alias("depth"))
    if path_column not in frame.columns:
        return base
    column = _path_string(frame, path_column)
    parts = frame.with_columns(column.str.strip_chars("/").str.split("/").alias("_parts")).filter(
        pl.col("_parts").is_not_null() & (pl.col("_parts").list.len() > 0)
    )
    parts = parts.filter(pl.col("_parts").list.first() != "")
    if parts.height == 0:
        return base
    deep = (
        parts.with_columns(pl.int_ranges(1, pl.col("_parts").list.len() + 1).alias("depth"))
        .explode("depth")
        .with_columns(pl.col("_parts").list.head(pl.col("depth")).list.join("/").alias("node"))
        .drop("_parts")
        .with_columns(pl.col("depth").cast(pl.Int32))
    )
    return pl.concat(
        [base.with_columns(pl.col("depth").cast(pl.Int32)), deep], how="diagonal_relaxed"
    )


def node_rates(
    rows: pl.DataFrame, flags: list[str], *, path_column: str = "taxonomy_path"
) -> pl.DataFrame:
    """Per node: ``docs`` and, for each boolean column in ``flags``, its count and rate.

    The rows are counted per path first (``_path_counts``) and only the paths are spread
    over their nodes: what is held follows the taxonomy, not the rows (a row per document
    and ancestor node held ~240 MB at 200k documents, in dedup's and decontam's process)."""
    return node_rates_batches([rows], flags, path_column=path_column)


def node_rates_batches(
    batches: Iterable[pl.DataFrame], flags: list[str], *, path_column: str = "taxonomy_path"
) -> pl.DataFrame:
    """``node_rates`` of the rows of all ``batches`` together (at least one), holding one
    batch and the per-path counts so far: a caller streaming a file's paths never holds a
    path per document (at 1M documents, decontam reading the whole column added ~25 MB to
    its peak)."""
    counts: pl.DataFrame | None = None
    for rows in batches:
        kept = rows.select([c for c in (path_column, *flags) if c in rows.columns])
        paths = _with_path(kept, path_column)
        if path_column != "taxonomy_path":
            paths = paths.rename({path_column: "taxonomy_path"})
        part = _path_counts(paths, flags)
        counts = part if counts is None else _add_path_counts(counts, part, flags)
    if counts is None:
        raise ValueError("node_rates_batches: no batch given")
    return _with_rates(_spread(counts, flags), flags)


def _with_rates(counts: pl.DataFrame, flags: list[str]) -> pl.DataFrame:
    out = counts.with_columns(
        [(pl.col(f) / pl.col("docs")).round(4).alias(f"{f}_rate") for f in flags]
    )
    return out.sort("depth", "node")


@dataclass
class DiversityReport:
    """The report's tables plus a one-level summary (what the run report shows)."""

    nodes: pl.DataFrame
    openers: pl.DataFrame
    cluster_sizes: pl.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)
    #: most per-document rows held at once while it was computed (0: not measured)
    max_rows_held: int = 0

    def write(self, outdir: str | os.PathLike[str], prefix: str = "diversity") -> dict[str, Path]:
        """Write ``<prefix>_nodes|openers|clusters.parquet`` and ``<prefix>_summary.json``."""
        out = Path(outdir)
        paths = {
            "nodes": write_parquet_atomic(self.nodes, out / f"{prefix}_nodes.parquet"),
            "openers": write_parquet_atomic(self.openers, out / f"{prefix}_openers.parquet"),
            "clusters": write_parquet_atomic(
                self.cluster_sizes, out / f"{prefix}_clusters.parquet"
            ),
        }
        summary_path = out / f"{prefix}_summary.json"
        atomic_write_text(summary_path, json.dumps(self.summary, indent=2, sort_keys=True) + "\n")
        paths["summary"] = summary_path
        return paths

    def to_markdown(self, max_nodes: int = 15, max_openers: int = 10) -> str:
        """A short Markdown summary: overall rates, worst nodes, top openers, cluster sizes."""
        s = self.summary
        lines = [
            "### Diversity",
            "",
            f"- documents: {s.get('docs', 0)}",
            f"- duplicate rate: {s.get('dup_rate', 0):.2%} "
            f"(exact {s.get('exact_dups', 0)}, near {s.get('near_dups', 0)})",
            f"- contamination rate: {s.get('contamination_rate', 0):.2%} "
            f"({s.get('contaminated', 0)} documents)",
            f"- documents sharing their first {s.get('opener_words', 5)} words with another: "
            f"{s.get('opener_repeat_rate', 0):.2%}; sharing their first sentence: "
            f"{s.get('sentence_repeat_rate', 0):.2%}",
            f"- duplicate clusters: {s.get('clusters', 0)} (largest {s.get('largest_cluster', 0)})",
        ]
        nodes = self.nodes.filter(pl.col("node") != ALL_NODE)
        if nodes.height:
            worst = nodes.sort(["dup_rate", "docs"], descending=True).head(max_nodes)
            lines += [
                "",
                "| node | docs | dup rate | contamination | opener repeats |",
                "| --- | ---: | ---: | ---: | ---: |",
            ]
            for r in worst.iter_rows(named=True):
                lines.append(
                    f"| {r['node']} | {r['docs']} | {r['dup_rate']:.2%} | "
                    f"{r['contaminated_rate']:.2%} | {r['opener_repeat_rate']:.2%} |"
                )
        if self.openers.height:
            lines += ["", "| repeated opener | kind | docs |", "| --- | --- | ---: |"]
            for r in self.openers.head(max_openers).iter_rows(named=True):
                text = str(r["opener"]).replace("|", "\\|")
                lines.append(f"| {text} | {r['kind']} | {r['count']} |")
        if self.cluster_sizes.height:
            sizes = ", ".join(
                f"{r['size']}: {r['clusters']}" for r in self.cluster_sizes.iter_rows(named=True)
            )
            lines += ["", f"Cluster sizes (size: clusters): {sizes}"]
        return "\n".join(lines)


def _flag_frame(
    base: pl.DataFrame, clusters: pl.DataFrame | None, hits: pl.DataFrame | None, id_column: str
) -> pl.DataFrame:
    ids = base.select(pl.col(id_column).alias("_id"))
    out = base
    if clusters is not None and clusters.height:
        removed = clusters.filter(pl.col("removed")).select(
            pl.col("id").alias("_id"),
            (pl.col("kind") == "exact").alias("exact_dup"),
            (pl.col("kind") == "near").alias("near_dup"),
        )
        removed = removed.with_columns(pl.col("_id").cast(ids.schema["_id"]))
        out = out.with_columns(ids["_id"]).join(removed, on="_id", how="left").drop("_id")
    for col in ("exact_dup", "near_dup"):
        if col not in out.columns:
            out = out.with_columns(pl.lit(False).alias(col))
    out = out.with_columns(
        pl.col("exact_dup").fill_null(False),
        pl.col("near_dup").fill_null(False),
    ).with_columns((pl.col("exact_dup") | pl.col("near_dup")).alias("dup"))
    if hits is not None and hits.height:
        bad = (
            hits.select(pl.col("id").alias("_id"))
            .unique()
            .with_columns(pl.lit(True).alias("contaminated"))
        )
        bad = bad.with_columns(pl.col("_id").cast(ids.schema["_id"]))
        out = out.with_columns(ids["_id"]).join(bad, on="_id", how="left").drop("_id")
    if "contaminated" not in out.columns:
        out = out.with_columns(pl.lit(False).alias("contaminated"))
    return out.with_columns(pl.col("contaminated").fill_null(False))


def diversity_report(
    data: pl.DataFrame | pl.LazyFrame,
    clusters: pl.DataFrame | None = None,
    hits: pl.DataFrame | None = None,
    *,
    text_column: str = "text",
    id_column: str = "id",
    opener_words: int = 5,
    top: int = 50,
    batch_rows: int = BATCH_ROWS,
    spill_dir: str | os.PathLike[str] | None = None,
) -> DiversityReport:
    """Build the diversity tables from corpus rows (before dedup) and the stage outputs.

    ``data`` may be a LazyFrame over large Parquet files: it is read ``batch_rows`` rows at a
    time and only the id, taxonomy path and the first characters of each text are read.
    Per-path counts are added batch by batch (then spread over the nodes); the opener
    repeats need a global grouping, so each batch's (path, opener) counts go to bucket files
    (by a hash of the opener) in a temporary directory under ``spill_dir`` and each bucket is
    grouped on its own. The tables equal ``diversity_from_openers`` over all rows at once.
    ``max_rows_held`` of the report is the most rows held at once (a batch, or one bucket
    spread over its nodes).
    """
    lazy = data.lazy() if isinstance(data, pl.DataFrame) else data
    names = lazy.collect_schema().names()
    keep = [c for c in (id_column, "taxonomy_path") if c in names]
    base = lazy.select([*[pl.col(c) for c in keep], *opener_exprs(text_column, opener_words)])
    total = int(base.select(pl.len()).collect().item())
    n_buckets = max(1, 2 * math.ceil(total / max(1, batch_rows)))
    flags = ["exact_dup", "near_dup", "dup", "contaminated"]
    counts: pl.DataFrame | None = None  # per taxonomy path: docs and flag counts
    held = 0
    offset = 0
    with tempfile.TemporaryDirectory(prefix=".diversity-", dir=spill_dir) as tmp:
        spill = _Spill(Path(tmp), n_buckets, compact_rows=batch_rows)
        try:
            from builder.util.partitions import lazy_batches

            # frames of at most batch_rows rows, one held at a time
            for batch in lazy_batches(base, batch_rows):
                if id_column not in keep:
                    batch = batch.with_row_index(id_column, offset=offset).with_columns(
                        pl.col(id_column).cast(pl.String)
                    )
                offset += batch.height
                held = max(held, batch.height)
                flagged = _with_path(_flag_frame(batch, clusters, hits, id_column))
                # Counts are summed per path and only then spread over the nodes: a batch
                # has far fewer paths than documents.
                part = _path_counts(flagged, flags)
                counts = part if counts is None else _add_path_counts(counts, part, flags)
                for kind in _OPENER_KINDS:
                    spill.write(
                        kind,
                        flagged.filter(pl.col(kind).is_not_null())
                        .group_by(
                            pl.col("taxonomy_path").alias("path"), pl.col(kind).alias("value")
                        )
                        .agg(pl.len().cast(pl.Int64).alias("_n")),
                    )
        finally:
            spill.close()
        repeats, openers, bucket_rows = spill.reduce(top)
    held = max(held, bucket_rows)
    if counts is None:
        node_counts = _node_counts(
            expand_nodes(_flag_frame(base.collect(), None, None, id_column)), flags
        )
    else:
        node_counts = _spread(counts, flags)
    report = _assemble_report(
        node_counts, repeats, openers, clusters, flags, total, opener_words, top
    )
    report.max_rows_held = held
    return report


def _with_path(frame: pl.DataFrame, path_column: str = "taxonomy_path") -> pl.DataFrame:
    """``frame`` with its taxonomy path as one string (``expand_nodes``' reading of it;
    null, a row of the ``(all)`` node only, when there is none)."""
    if path_column not in frame.columns:
        return frame.with_columns(pl.lit(None, pl.String).alias(path_column))
    return frame.with_columns(_path_string(frame, path_column).alias(path_column))


def _path_counts(rows: pl.DataFrame, flags: list[str]) -> pl.DataFrame:
    """Per taxonomy path of ``rows`` (documents): ``docs`` and the count of each flag."""
    return rows.group_by("taxonomy_path").agg(
        pl.len().cast(pl.Int64).alias("docs"),
        *[pl.col(f).fill_null(False).sum().cast(pl.Int64) for f in flags],
    )


def _spread(counts: pl.DataFrame, flags: list[str]) -> pl.DataFrame:
    """A ``_path_counts`` table summed over the nodes of each path (``expand_nodes``)."""
    return (
        expand_nodes(counts)
        .group_by("node", "depth")
        .agg(pl.col("docs").sum().cast(pl.UInt32), *[pl.col(f).sum() for f in flags])
    )


def _add_path_counts(a: pl.DataFrame, b: pl.DataFrame, flags: list[str]) -> pl.DataFrame:
    """Two ``_path_counts`` tables added up."""
    return (
        pl.concat([a, b])
        .group_by("taxonomy_path")
        .agg(pl.col("docs").sum(), *[pl.col(f).sum() for f in flags])
    )


_OPENER_KINDS = ("first_words", "first_sentence")
_REPEAT_COLUMNS = {"first_words": "opener_repeat", "first_sentence": "sentence_repeat"}


def _node_counts(expanded: pl.DataFrame, flags: list[str]) -> pl.DataFrame:
    aggs: list[pl.Expr] = [pl.len().alias("docs")]
    for f in flags:
        aggs.append(pl.col(f).fill_null(False).sum().cast(pl.Int64).alias(f))
    return expanded.group_by("node", "depth").agg(aggs)


class _Spill:
    """Bucket files of (node, opener value, count) rows, one set per opener kind."""

    def __init__(self, directory: Path, n_buckets: int, compact_rows: int) -> None:
        import pyarrow as pa

        self.directory = directory
        self.n = n_buckets
        self.compact_rows = max(1, compact_rows)
        self.schema = pa.schema([("path", pa.string()), ("value", pa.string()), ("_n", pa.int64())])
        self.sinks: dict[str, list[Any]] = {
            kind: [self._open(kind, b) for b in range(n_buckets)] for kind in _OPENER_KINDS
        }
        self.rows = {kind: [0] * n_buckets for kind in _OPENER_KINDS}
        self.max_rows_held = 0

    def _path(self, kind: str, b: int) -> Path:
        return self.directory / f"{kind}-{b:05d}.arrow"

    def _open(self, kind: str, b: int) -> Any:
        import pyarrow.ipc as ipc

        return ipc.new_stream(str(self._path(kind, b)), self.schema)

    def _read(self, kind: str, b: int) -> pl.DataFrame:
        import pyarrow as pa
        import pyarrow.ipc as ipc

        with pa.OSFile(str(self._path(kind, b))) as source:  # copied: the file is rewritten
            table = ipc.open_stream(source).read_all()
        self.max_rows_held = max(self.max_rows_held, table.num_rows)
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        return frame.group_by("path", "value").agg(pl.col("_n").sum())

    def write(self, kind: str, rows: pl.DataFrame) -> None:
        """Append counts to their buckets; a bucket that grew past ``compact_rows`` rows is
        rewritten with its counts summed (a frequent opener adds a row per batch)."""
        bucket = (rows["value"].hash(seed=7) % self.n).cast(pl.Int64).alias("_b")
        # one split in Polars (iterating a group_by gathers each group by index: ~3x slower)
        parts = rows.with_columns(bucket).partition_by("_b", as_dict=True, include_key=False)
        for (b,), part in parts.items():
            i = int(b)  # type: ignore[call-overload]
            self.sinks[kind][i].write_table(
                part.select("path", "value", "_n").to_arrow().cast(self.schema)
            )
            self.rows[kind][i] += part.height
            if self.rows[kind][i] > self.compact_rows:
                self.sinks[kind][i].close()
                merged = self._read(kind, i)
                self.sinks[kind][i] = self._open(kind, i)
                self.sinks[kind][i].write_table(merged.to_arrow().cast(self.schema))
                self.rows[kind][i] = merged.height

    def close(self) -> None:
        for sinks in self.sinks.values():
            for sink in sinks:
                sink.close()

    def reduce(self, top: int) -> tuple[pl.DataFrame, pl.DataFrame, int]:
        """Per node, the documents whose opener is repeated in that node (one column per
        kind); the ``top`` most repeated openers of the whole corpus per kind; the most
        rows one bucket held. An opener lives in one bucket with all its paths; one met
        once in the corpus repeats in no node, so only the others are spread over the
        nodes of their paths."""
        repeats: list[pl.DataFrame] = []
        openers: list[pl.DataFrame] = []
        for kind in _OPENER_KINDS:
            column = _REPEAT_COLUMNS[kind]
            for b in range(self.n):
                counts = self._read(kind, b)
                counts = counts.filter(pl.col("_n").sum().over("value") >= 2)
                expanded = expand_nodes(counts.rename({"path": "taxonomy_path"}))
                self.max_rows_held = max(self.max_rows_held, expanded.height)
                grouped = (
                    expanded.group_by("node", "value")
                    .agg(pl.col("_n").sum())
                    .filter(pl.col("_n") >= 2)
                )
                repeats.append(
                    grouped.group_by("node").agg(
                        pl.lit(column).alias("kind"), pl.col("_n").sum().alias("n")
                    )
                )
                openers.append(
                    grouped.filter(pl.col("node") == ALL_NODE)
                    .sort(["_n", "value"], descending=[True, False])
                    .head(top)
                    .select(
                        pl.lit(kind).alias("kind"),
                        pl.col("value").alias("opener"),
                        pl.col("_n").cast(pl.UInt32).alias("count"),
                    )
                )
        schema = {"node": pl.String, "kind": pl.String, "n": pl.Int64}
        rep = pl.concat([pl.DataFrame(schema=schema), *repeats], how="vertical_relaxed")
        rep = rep.group_by("node", "kind").agg(pl.col("n").sum())
        empty = pl.DataFrame(schema={"kind": pl.String, "opener": pl.String, "count": pl.UInt32})
        return rep, pl.concat([empty, *openers]), self.max_rows_held


def _assemble_report(
    counts: pl.DataFrame,
    repeats: pl.DataFrame,
    openers: pl.DataFrame,
    clusters: pl.DataFrame | None,
    flags: list[str],
    total: int,
    opener_words: int,
    top: int,
) -> DiversityReport:
    nodes = _with_rates(counts.with_columns(pl.col("docs").cast(pl.UInt32)), flags)
    for column in ("opener_repeat", "sentence_repeat"):
        per = repeats.filter(pl.col("kind") == column).select(
            "node", pl.col("n").cast(pl.Int64).alias(column)
        )
        nodes = nodes.join(per, on="node", how="left").with_columns(pl.col(column).fill_null(0))
    return _finish_report(nodes, openers, clusters, max(total, 1), opener_words, top)


def diversity_from_openers(
    base: pl.DataFrame,
    clusters: pl.DataFrame | None = None,
    hits: pl.DataFrame | None = None,
    *,
    id_column: str = "id",
    opener_words: int = 5,
    top: int = 50,
) -> DiversityReport:
    """``diversity_report`` from rows already reduced to id, taxonomy_path (optional),
    ``first_words`` and ``first_sentence`` (see ``opener_exprs``)."""
    flagged = _flag_frame(base, clusters, hits, id_column)

    # Opener repeats within each node (the (all) node = the whole corpus).
    expanded = expand_nodes(flagged)
    rep = []
    for kind in ("first_words", "first_sentence"):
        counts = (
            expanded.filter(pl.col(kind).is_not_null())
            .group_by("node", kind)
            .agg(pl.len().alias("_n"))
        )
        col = "opener_repeat" if kind == "first_words" else "sentence_repeat"
        rep.append(
            expanded.join(counts, on=["node", kind], how="left")
            .group_by("node")
            .agg((pl.col("_n").fill_null(0) >= 2).sum().cast(pl.Int64).alias(col))
        )
    nodes = node_rates(flagged, ["exact_dup", "near_dup", "dup", "contaminated"])
    for r in rep:
        nodes = nodes.join(r, on="node", how="left")
    openers = pl.concat(
        [
            flagged.filter(pl.col(kind).is_not_null())
            .group_by(kind)
            .agg(pl.len().alias("count"))
            .filter(pl.col("count") >= 2)
            .select(pl.lit(kind).alias("kind"), pl.col(kind).alias("opener"), "count")
            for kind in ("first_words", "first_sentence")
        ]
    )
    return _finish_report(nodes, openers, clusters, max(flagged.height, 1), opener_words, top)


def _finish_report(
    nodes: pl.DataFrame,
    openers: pl.DataFrame,
    clusters: pl.DataFrame | None,
    total: int,
    opener_words: int,
    top: int,
) -> DiversityReport:
    """Repeat rates, the top openers, cluster sizes and the summary, from per-node counts
    (with ``opener_repeat`` and ``sentence_repeat``) and the repeated openers."""
    nodes = nodes.with_columns(
        (pl.col("opener_repeat") / pl.col("docs")).round(4).alias("opener_repeat_rate"),
        (pl.col("sentence_repeat") / pl.col("docs")).round(4).alias("sentence_repeat_rate"),
    ).sort("depth", "node")
    openers = (
        openers.with_columns((pl.col("count") / total).round(4).alias("share"))
        .sort(["count", "kind", "opener"], descending=[True, False, False])
        .head(top)
    )

    if clusters is not None and clusters.height:
        per = clusters.group_by("cluster_id").agg(pl.len().alias("size"))
        sizes = (
            per.group_by("size")
            .agg(pl.len().alias("clusters"))
            .with_columns((pl.col("size") * pl.col("clusters")).alias("documents"))
            .sort("size")
        )
    else:
        sizes = pl.DataFrame(
            schema={"size": pl.UInt32, "clusters": pl.UInt32, "documents": pl.UInt32}
        )

    allrow = nodes.filter(pl.col("node") == ALL_NODE).to_dicts()[0]
    summary = {
        "docs": int(allrow["docs"]),
        "exact_dups": int(allrow["exact_dup"]),
        "near_dups": int(allrow["near_dup"]),
        "dup_rate": float(allrow["dup_rate"]),
        "contaminated": int(allrow["contaminated"]),
        "contamination_rate": float(allrow["contaminated_rate"]),
        "opener_words": opener_words,
        "opener_repeat_rate": float(allrow["opener_repeat_rate"]),
        "sentence_repeat_rate": float(allrow["sentence_repeat_rate"]),
        "clusters": int(sizes["clusters"].sum()) if sizes.height else 0,
        "largest_cluster": int(sizes["size"].max()) if sizes.height else 0,  # type: ignore[arg-type]
        "nodes": int(nodes.height - 1),
    }
    return DiversityReport(nodes=nodes, openers=openers, cluster_sizes=sizes, summary=summary)


def format_node_rates(nodes: pl.DataFrame, rate_columns: list[str], *, limit: int = 25) -> str:
    """Plain-text table of per-node rates for the CLI (worst first when there are many)."""
    rows = nodes.filter(pl.col("node") != ALL_NODE)
    if rows.height == 0:
        return ""
    if rows.height > limit:
        rows = rows.sort([rate_columns[0], "docs"], descending=True).head(limit)
        title = f"per taxonomy node (top {limit} of {nodes.height - 1} by {rate_columns[0]}):"
    else:
        title = "per taxonomy node:"
    width = max(12, min(48, max(len(str(n)) for n in rows["node"].to_list())))
    header = f"  {'node':<{width}} {'docs':>7} " + " ".join(f"{c:>14}" for c in rate_columns)
    lines = [title, header]
    for r in rows.iter_rows(named=True):
        node = str(r["node"])
        if len(node) > width:
            node = "..." + node[-(width - 3) :]
        vals = " ".join(f"{r[c]:>14.2%}" for c in rate_columns)
        lines.append(f"  {node:<{width}} {r['docs']:>7} {vals}")
    return "\n".join(lines)
