"""The report's numbers: document and rejection facts, the coverage tree, openers.

``summarize_documents`` reads the documents partition by partition and keeps only small
tables (counts per path, per kind and length, opener counts spilled to hashed buckets on
disk), so the report's memory does not grow with the corpus; ``document_facts`` is the
per-document form of the same facts, for frames that fit in memory.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from builder.assemble import SHARD_GLOB, Source, to_lazy
from builder.tokens import count_tokens
from builder.util.partitions import lazy_batches

UNKNOWN_PATH = "(unknown)"
#: Rejection stages counted as duplicates / contamination (prefix match: dedup-exact, ...).
DUP_STAGE_PREFIX = "dedup"
CONTAM_STAGE_PREFIX = "decontam"
OPENER_TOP = 15


# ---------------------------------------------------------------------------------------------
# Data


def load_source(source: Source, default: Path | None, what: str) -> pl.LazyFrame | None:
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


def leaf_nodes(nodes: Mapping[str, Any]) -> list[Any]:
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


def rejection_counts(rejected: pl.LazyFrame | None) -> pl.DataFrame:
    """Rejected documents counted per path, stage and reason (column ``len``): a streaming
    group-by, so only one row per distinct (path, stage, reason) is held."""
    if rejected is None:
        return pl.DataFrame(
            schema={
                "taxonomy_path": pl.String,
                "stage": pl.String,
                "reason": pl.String,
                "len": pl.UInt32,
            }
        )
    schema = rejected.collect_schema()
    return (
        rejected.select(
            _path_expr(schema),
            _col(schema, "stage", pl.String).fill_null("(none)"),
            _col(schema, "reason", pl.String).fill_null("(none)"),
        )
        .group_by("taxonomy_path", "stage", "reason")
        .len()
        .collect(engine="streaming")
    )


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
    facts: pl.DataFrame | DocumentSummary,
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
    if isinstance(facts, DocumentSummary):
        per_path = facts.paths
    else:
        per_path = facts.group_by("taxonomy_path").agg(pl.len(), pl.col("n_tokens").sum())
    if per_path.height:
        for path, n, t in per_path.iter_rows():
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
        # Per-row facts (rejection_facts) or counts per path, stage and reason
        # (rejection_counts, column ``len``).
        n = pl.col("len").sum() if "len" in rejections.columns else pl.len()
        agg = rejections.group_by("taxonomy_path", kinds.alias("k")).agg(n)
        for path, k, n in agg.iter_rows():
            own.setdefault(path, {})[k] = n
    names = {n.id: str(getattr(n, "name", n.id)) for n in taxonomy} if taxonomy is not None else {}
    for path in sorted(own):  # paths outside the taxonomy: a stable order, not a hash order
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


def opener_table(facts: pl.DataFrame | DocumentSummary, top: int = OPENER_TOP) -> pl.DataFrame:
    """The ``top`` most common openers with their document count and share."""
    total = facts.documents if isinstance(facts, DocumentSummary) else facts.height
    if not total:
        return pl.DataFrame(
            schema={"opener": pl.String, "documents": pl.UInt32, "share": pl.Float64}
        )
    if isinstance(facts, DocumentSummary):
        return facts.openers.head(top).with_columns((pl.col("documents") / total).alias("share"))
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
# Streaming summary (what write_report uses: memory flat in corpus size)

#: Rows per batch when the caller gives none (the default of ``[run] partition_rows``).
BATCH_ROWS = 20_000
_LENGTH_COLUMNS = ("words", "n_tokens")


def nearest_quantile(values: Sequence[int], counts: Sequence[int], q: float) -> float | None:
    """Polars' ``quantile(q)`` (interpolation ``nearest``) of the sample in which each value
    of the sorted, distinct ``values`` occurs ``counts`` times: element ``floor(q * (n - 1) +
    0.5)`` of the sorted sample."""
    n = sum(counts)
    if not n:
        return None
    target = int(q * (n - 1) + 0.5)
    seen = 0
    for value, count in zip(values, counts, strict=True):
        seen += count
        if seen > target:
            return float(value)
    return float(values[-1])


def counted_median(values: Sequence[int], counts: Sequence[int]) -> float | None:
    """The median of the sample in which each sorted, distinct value occurs ``counts`` times
    (the mean of the two middle elements when the sample is even, as Polars and numpy)."""
    n = sum(counts)
    if not n:
        return None
    lo, hi = (n - 1) // 2, n // 2
    out: list[float] = []
    seen = 0
    for value, count in zip(values, counts, strict=True):
        first, seen = seen, seen + count
        for k in (lo, hi):
            if first <= k < seen:
                out.append(float(value))
    return (out[0] + out[1]) / 2


@dataclass
class DocumentSummary:
    """The documents as the report needs them, aggregated: no per-document rows.

    ``paths``: documents and tokens per coverage path; ``lengths``: how many documents of
    each kind have each word count (``column`` = ``words``) and each token count
    (``n_tokens``); ``openers``: the most repeated openers; ``distinct_openers``: how many
    different openers there are. ``max_rows_held``: the most per-document rows this summary
    ever held at once (a batch, or one opener bucket), which bounds its memory.
    """

    documents: int = 0
    tokens: int = 0
    paths: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(
            schema={"taxonomy_path": pl.String, "len": pl.UInt32, "n_tokens": pl.Int64}
        )
    )
    lengths: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(
            schema={"kind": pl.String, "column": pl.String, "value": pl.Int64, "count": pl.Int64}
        )
    )
    openers: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(schema={"opener": pl.String, "documents": pl.UInt32})
    )
    distinct_openers: int = 0
    max_rows_held: int = 0

    @property
    def kinds(self) -> list[str]:
        """The document kinds, sorted."""
        return sorted(set(self.lengths["kind"].to_list()))

    def counted(self, column: str, kind: str | None = None) -> tuple[list[int], list[int]]:
        """Sorted distinct non-null values of ``column`` (of one ``kind``, or all) and how
        many documents have each."""
        rows = self.lengths.filter((pl.col("column") == column) & pl.col("value").is_not_null())
        if kind is not None:
            rows = rows.filter(pl.col("kind") == kind)
        rows = rows.group_by("value").agg(pl.col("count").sum()).sort("value")
        return rows["value"].to_list(), rows["count"].to_list()

    def quantile(self, column: str, q: float, kind: str | None = None) -> float | None:
        """``column``'s quantile as Polars computes it over the documents (nearest)."""
        return nearest_quantile(*self.counted(column, kind), q)

    def median(self, column: str, kind: str | None = None) -> float | None:
        """``column``'s median over the documents (of one ``kind``, or all)."""
        return counted_median(*self.counted(column, kind))

    def by_kind(self) -> pl.DataFrame:
        """Per kind: documents, tokens, median/p5/p95 tokens and median words."""
        rows = []
        for kind in self.kinds:
            docs = self.lengths.filter((pl.col("kind") == kind) & (pl.col("column") == "words"))
            values, counts = self.counted("n_tokens", kind)
            rows.append(
                {
                    "kind": kind,
                    "documents": int(docs["count"].sum()),
                    "tokens": sum(v * c for v, c in zip(values, counts, strict=True)),
                    "median tokens": counted_median(values, counts),
                    "p5 tokens": nearest_quantile(values, counts, 0.05),
                    "p95 tokens": nearest_quantile(values, counts, 0.95),
                    "median words": self.median("words", kind),
                }
            )
        schema = {
            "kind": pl.String,
            "documents": pl.UInt32,
            "tokens": pl.Int64,
            "median tokens": pl.Float64,
            "p5 tokens": pl.Float64,
            "p95 tokens": pl.Float64,
            "median words": pl.Float64,
        }
        return pl.DataFrame(rows, schema=schema, orient="row")


def _merge(parts: pl.DataFrame, keys: list[str], sums: list[str]) -> pl.DataFrame:
    return parts.group_by(keys).agg(pl.col(s).sum() for s in sums)


def summarize_documents(
    documents: pl.LazyFrame,
    opener_words: int = 4,
    *,
    batch_rows: int = BATCH_ROWS,
    top: int = OPENER_TOP,
    spill_dir: str | os.PathLike[str] | None = None,
) -> DocumentSummary:
    """Summarise ``documents`` for the report, ``batch_rows`` documents at a time.

    Counts per path and per (kind, length) are added batch by batch (they are small: as many
    rows as paths and distinct lengths). Openers need a global grouping: each batch's opener
    counts are appended to one of several bucket files (by a hash of the opener) in a
    temporary directory under ``spill_dir``, then each bucket is grouped on its own; an
    opener lives in one bucket only, so the per-bucket top lists merge exactly.
    """
    import pyarrow as pa
    import pyarrow.ipc as ipc

    names = documents.collect_schema().names()
    documents = documents.select(
        [c for c in ("id", "taxonomy_path", "session", "kind", "n_tokens", "text") if c in names]
    )
    total = int(documents.select(pl.len()).collect().item())
    n_buckets = max(1, 2 * math.ceil(total / max(1, batch_rows)))
    summary = DocumentSummary()
    paths: list[pl.DataFrame] = [summary.paths]
    lengths: list[pl.DataFrame] = [summary.lengths]
    opener_schema = pa.schema([("opener", pa.string()), ("n", pa.int64())])
    with tempfile.TemporaryDirectory(prefix=".report-openers-", dir=spill_dir) as tmp:
        sinks = [
            ipc.new_stream(str(Path(tmp) / f"{b:05d}.arrow"), opener_schema)
            for b in range(n_buckets)
        ]
        try:
            for batch in lazy_batches(documents, batch_rows):
                summary.max_rows_held = max(summary.max_rows_held, batch.height)
                facts = document_facts(batch.lazy(), opener_words)
                summary.documents += facts.height
                summary.tokens += int(facts["n_tokens"].sum() or 0)
                paths = [
                    _merge(
                        pl.concat(
                            [
                                *paths,
                                facts.group_by("taxonomy_path").agg(
                                    pl.len(), pl.col("n_tokens").sum()
                                ),
                            ]
                        ),
                        ["taxonomy_path"],
                        ["len", "n_tokens"],
                    )
                ]
                for column in _LENGTH_COLUMNS:
                    lengths.append(
                        facts.group_by("kind", pl.col(column).cast(pl.Int64).alias("value"))
                        .agg(pl.len().cast(pl.Int64).alias("count"))
                        .select("kind", pl.lit(column).alias("column"), "value", "count")
                    )
                lengths = [_merge(pl.concat(lengths), ["kind", "column", "value"], ["count"])]
                openers = facts.group_by("opener").agg(pl.len().cast(pl.Int64).alias("n"))
                bucket = (openers["opener"].hash(seed=7) % n_buckets).cast(pl.Int64)
                for (b,), part in openers.with_columns(bucket.alias("_b")).group_by(
                    "_b", maintain_order=True
                ):
                    sinks[int(b)].write_table(part.drop("_b").to_arrow().cast(opener_schema))
        finally:
            for sink in sinks:
                sink.close()
        candidates = [summary.openers]
        for b in range(n_buckets):
            with pa.OSFile(str(Path(tmp) / f"{b:05d}.arrow")) as source:
                table = ipc.open_stream(source).read_all()
            summary.max_rows_held = max(summary.max_rows_held, table.num_rows)
            counts = _merge(pl.from_arrow(table), ["opener"], ["n"])  # type: ignore[arg-type]
            summary.distinct_openers += counts.height
            candidates.append(
                counts.filter((pl.col("opener") != "") & (pl.col("n") > 1))
                .sort(["n", "opener"], descending=[True, False])
                .head(top)
                .select("opener", pl.col("n").cast(pl.UInt32).alias("documents"))
            )
    summary.paths = paths[0]
    summary.lengths = lengths[0]
    summary.openers = (
        pl.concat(candidates).sort(["documents", "opener"], descending=[True, False]).head(top)
    )
    return summary
