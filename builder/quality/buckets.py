"""The corpus joined with its embeddings, one bucket at a time, in bounded memory.

The quality stage writes each document's embedding to its own partitions, in its order; the
passes that need texts (or lengths) and vectors together (the diversity summary, semantic
dedup) would otherwise join the whole corpus with every embedding in memory: ~1 KB of
vector plus the text per document, growing with the corpus. When the corpus's rows are, in
order, some of the embeddings' (what the stages leave), ``EmbeddedCorpus`` reads both side by
side and writes chunks of ``bucket_rows`` rows with their vectors (``joined.merge_in_order``);
otherwise it splits both sides by a hash of the id into buckets of about ``bucket_rows`` rows
on disk (temporary files under ``work/<name>/_buckets``, removed on exit), then joins one
bucket at a time. It can be iterated several times (semantic dedup makes two passes, the
diversity summary's Vendi scores a few more): the first pass writes each bucket's joined rows
and vectors back (``joined/<bucket>.arrow``), so later passes read them without a join or a
list-to-matrix conversion. A corpus of one bucket is read directly, without temporary
files. Temporary files are uncompressed Arrow IPC: read back once or a few times here,
Parquet would cost CPU.

Texts never travel with the buckets: a pass that needs only their lengths asks for
``text_lengths`` (from the embeddings, which carry them; for an older run's, computed as each
read batch arrives), and the diversity summary's node samples get their texts from
``text_groups``, one pass over the
corpus that writes each group's wanted texts to its own file. The corpus is read
``read_rows`` rows at a time; ``max_rows_held`` records the most rows any read, bucket or
group held at once (the tests' proof that memory does not follow the corpus).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from builder.quality.joined import (
    LENGTH,
    _BucketFiles,
    _fixed_vectors,
    _frame,
    _read_joined,
    _split,
    _write_joined,
    bucket_path,
    merge_in_order,
    read_bucket,
)
from builder.util.ahead import read_ahead
from builder.util.blas import one_blas_thread
from builder.util.memory import release_memory
from builder.util.partitions import count_rows, iter_batches, list_parts

if TYPE_CHECKING:  # pragma: no cover
    from builder.quality.semdedup import SemanticResult
    from builder.stages.base import RunContext

#: Rows of the corpus (ids, paths and embeddings) held at once.
BUCKET_ROWS = 50_000
#: Rows read from the corpus or the embedding partitions at once (texts are large).
READ_ROWS = 10_000
#: The columns the diversity summary streams (texts come from ``text_groups``).
DIVERSITY_COLUMNS = ("id", "taxonomy_path", "discipline")


class EmbeddedCorpus:
    """``with EmbeddedCorpus(ctx, path, columns) as corpus: for docs, vectors in corpus``:
    batches of the corpus at ``path`` (a Parquet file or folder of partitions; ``columns``
    that exist, plus its row number ``_row``) with the quality stage's embeddings of those
    rows (None when any is missing). Module docstring."""

    def __init__(
        self,
        ctx: RunContext,
        path: Path,
        columns: Sequence[str],
        *,
        bucket_rows: int | None = None,
        read_rows: int | None = None,
        text_lengths: bool = False,
        name: str = "diversity",
        ahead: bool = False,
    ) -> None:
        self.path = path
        #: True: the embedding partitions are read one batch ahead of the join, on a thread
        #: (Parquet's list decoding is off the GIL), for one more batch held: for a caller
        #: that leaves a core idle (semantic dedup's first pass ran ~0.8 s of it on one core
        #: at 200k documents), not the diversity summary (its stage was no faster with it:
        #: the shards keep the other core busy).
        self.ahead = ahead
        self.files = list_parts(path) if path.is_dir() else [path]
        self.rows = count_rows(self.files)
        names = set(pq.read_schema(self.files[0]).names) if self.files else set()
        self.columns = [c for c in columns if c in names]
        #: True: each batch has ``LENGTH`` (characters of the text) and never the text.
        self.text_lengths = text_lengths and "text" in names
        self.embedding_parts = list_parts(ctx.paths.stage_dir("quality") / "embeddings")
        #: True: the lengths come with the embeddings, and the texts are not read at all.
        self.lengths_embedded = (
            self.text_lengths
            and bool(self.embedding_parts)
            and all("length" in pq.read_schema(p).names for p in self.embedding_parts)
        )
        self.bucket_rows = max(1, bucket_rows or BUCKET_ROWS)
        self.read_rows = max(1, min(read_rows or READ_ROWS, self.bucket_rows))
        self.buckets = max(1, -(-self.rows // self.bucket_rows))
        self.tmp = ctx.paths.work / name / "_buckets"
        #: The most rows held at once by one read batch, bucket or text group.
        self.max_rows_held = 0
        self._split_done = False
        #: Buckets whose joined rows are in ``joined/<bucket>.arrow``: whether with vectors.
        self._joined: dict[int, bool] = {}

    def __enter__(self) -> EmbeddedCorpus:
        return self

    def __exit__(self, *exc: Any) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _held(self, rows: int) -> None:
        self.max_rows_held = max(self.max_rows_held, rows)

    def _doc_batches(self) -> Iterator[pa.Table]:
        """The corpus's ``columns`` ``read_rows`` at a time (with ``LENGTH`` instead of the
        text when ``text_lengths``)."""
        from_text = self.text_lengths and not self.lengths_embedded
        read = [*self.columns, *(["text"] if from_text else [])]
        for table in iter_batches(self.files, batch_rows=self.read_rows, columns=read):
            self._held(table.num_rows)
            if from_text:
                text = table.column("text")
                lengths = pc.utf8_length(pc.fill_null(text, ""))
                table = table.drop_columns(["text"]).append_column(LENGTH, lengths.cast(pa.int64()))
            yield table
            # the decoded row group: else the allocators keep it, ~+150 MB
            release_memory(collect=False)

    def _embedding_batches(self) -> Iterator[pa.Table]:
        tables = iter_batches(self.embedding_parts, batch_rows=self.read_rows)
        for table in read_ahead(tables) if self.ahead else tables:
            self._held(table.num_rows)
            yield table
            release_memory(collect=False)

    def __iter__(self) -> Iterator[tuple[pl.DataFrame, np.ndarray | None]]:
        if self.rows == 0:
            return
        if self.buckets == 1:
            docs = pl.concat(
                [_frame(t) for t in self._doc_batches()], how="vertical_relaxed"
            ).with_row_index("_row")
            parts = [_frame(t) for t in self._embedding_batches()]
            embeddings = pl.concat(parts, how="vertical_relaxed") if parts else None
            self._held(docs.height)
            yield self._with_lengths(docs, embeddings), _vectors(docs, embeddings)
            return
        if not self._split_done:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self._joined.clear()
            merged = merge_in_order(
                self._doc_batches(),
                self._embedding_batches(),
                self.tmp / "joined",
                self.bucket_rows,
                lengths=self.lengths_embedded,
                held=self._held,
            )
            if merged is not None:  # the rows in order, with their vectors: joined already
                self._joined = dict.fromkeys(range(merged), True)
                self._split_done = True
        if not self._split_done:
            # The documents and the embeddings are split on two threads (reading, hashing
            # and writing Parquet mostly release the GIL); each writes its own files.
            with ThreadPoolExecutor(max_workers=2) as pool:
                docs = pool.submit(
                    _split, self._doc_batches(), self.tmp / "docs", self.buckets, rows=True
                )
                vectors = pool.submit(
                    _split,
                    self._embedding_batches(),
                    self.tmp / "emb",
                    self.buckets,
                    vectors="embedding",
                )
                docs.result()
                vectors.result()
            self._split_done = True
        for b in range(self.buckets):
            release_memory(collect=False)  # the last bucket's rows and vectors, before the next one
            joined = bucket_path(self.tmp / "joined", b)
            if b in self._joined:
                docs, vectors = _read_joined(joined, self._joined[b])
            else:
                docs_path = bucket_path(self.tmp / "docs", b)
                emb_path = bucket_path(self.tmp / "emb", b)
                if not docs_path.exists():
                    continue
                docs = _frame(read_bucket(docs_path))
                embeddings = _frame(read_bucket(emb_path)) if emb_path.exists() else None
                vectors = _vectors(docs, embeddings)
                docs = self._with_lengths(docs, embeddings)
                del embeddings
                if vectors is None or vectors.shape[1] > 0:  # (Arrow has no 0-wide vectors)
                    _write_joined(joined, docs, vectors)
                    self._joined[b] = vectors is not None
                    docs_path.unlink()
                    emb_path.unlink(missing_ok=True)
            self._held(docs.height)
            yield docs, vectors

    def _with_lengths(self, docs: pl.DataFrame, embeddings: pl.DataFrame | None) -> pl.DataFrame:
        """``docs`` with ``LENGTH`` from the embeddings (0 without one: no vectors then)."""
        if not self.lengths_embedded:
            return docs
        if embeddings is None:
            return docs.with_columns(pl.lit(0, dtype=pl.Int64).alias(LENGTH))
        found = docs.select(pl.col("id").cast(pl.String)).join(
            embeddings.select("id", "length"), on="id", how="left", maintain_order="left"
        )
        return docs.with_columns(found["length"].fill_null(0).alias(LENGTH))

    def text_groups(self, groups: Sequence[set[int]]) -> Iterator[dict[int, str]]:
        """The texts of each group of corpus rows (``_row`` numbers; a null text is ""), one
        dict per group, in order. One pass over the corpus writes every group's wanted texts
        to its own temporary file; then the groups are read back one at a time, so the texts
        held are one group's (and one read batch), whatever the corpus size."""
        wanted = [np.fromiter(g, dtype=np.int64, count=len(g)) for g in groups]
        if not any(len(w) for w in wanted):
            yield from ({} for _ in groups)
            return
        if len(groups) == 1:  # one group: no need for files
            yield self.texts(groups[0])
            return
        sel = pl.DataFrame(
            {
                "_row": np.concatenate(wanted),
                "_g": np.repeat(np.arange(len(wanted), dtype=np.int64), [len(w) for w in wanted]),
            }
        ).sort("_row")
        rows_sorted = sel["_row"].to_numpy()
        out = self.tmp / "texts"
        shutil.rmtree(out, ignore_errors=True)
        offset = 0
        with _BucketFiles(out) as files:
            for batch in iter_batches(self.files, batch_rows=self.read_rows, columns=["text"]):
                self._held(batch.num_rows)
                lo, hi = np.searchsorted(rows_sorted, [offset, offset + batch.num_rows])
                if hi > lo:
                    part = sel.slice(int(lo), int(hi - lo))
                    local = pa.array(part["_row"].to_numpy() - offset)
                    table = pa.table(
                        {
                            "_row": part["_row"].to_arrow(),
                            "text": pc.fill_null(batch.column("text").take(local), ""),
                        }
                    )
                    files.append(table, part["_g"].to_numpy())
                offset += batch.num_rows
                if offset > rows_sorted[-1]:
                    break
        try:
            for g in range(len(groups)):
                path = bucket_path(out, g)
                if not path.exists():
                    yield {}
                    continue
                table = read_bucket(path)
                self._held(table.num_rows)
                yield dict(
                    zip(
                        table.column("_row").to_pylist(),
                        table.column("text").to_pylist(),
                        strict=True,
                    )
                )
                del table
                path.unlink()
        finally:
            shutil.rmtree(out, ignore_errors=True)

    def texts(self, rows: set[int]) -> dict[int, str]:
        """The texts of the corpus rows ``rows`` (``_row`` numbers; a null text is ""),
        read a batch at a time: only the wanted ones are kept."""
        if not rows:
            return {}
        wanted = np.array(sorted(rows), dtype=np.int64)
        out: dict[int, str] = {}
        offset = 0
        for batch in iter_batches(self.files, batch_rows=self.read_rows, columns=["text"]):
            self._held(batch.num_rows)
            lo, hi = np.searchsorted(wanted, [offset, offset + batch.num_rows])
            if hi > lo:
                picked = batch.column("text").take(pa.array(wanted[lo:hi] - offset))
                out.update(zip(wanted[lo:hi].tolist(), picked.to_pylist(), strict=True))
            offset += batch.num_rows
            if offset > wanted[-1]:
                break
        self._held(len(out))
        return {row: text or "" for row, text in out.items()}


def _vectors(docs: pl.DataFrame, embeddings: pl.DataFrame | None) -> np.ndarray | None:
    """The embeddings of ``docs``' rows in order (None when any is missing)."""
    if embeddings is None or embeddings.height == 0 or docs.height == 0:
        return None
    found = docs.select(pl.col("id").cast(pl.String)).join(
        embeddings, on="id", how="left", maintain_order="left"
    )
    column = found["embedding"]
    if column.null_count():
        return None
    return embedding_matrix(column)


def embedding_matrix(column: pl.Series) -> np.ndarray:
    """A list-of-float column of equal-length vectors as an ``(n, d)`` float32 array
    (through one flat buffer, never a Python list per row)."""
    n = column.len()
    flat = column.explode().to_numpy().astype(np.float32, copy=False)
    return flat.reshape(n, -1) if n else np.zeros((0, 0), dtype=np.float32)


#: Documents whose vectors train semantic dedup's k-means (above: those with the smallest id
#: keys; every document is then assigned to the nearest centre in a second pass).
KMEANS_SAMPLE = 50_000


def streamed_semantic_clusters(
    ctx: RunContext,
    path: Path,
    *,
    threshold: float,
    cluster_size: int,
    sample_rows: int | None = None,
    bucket_rows: int | None = None,
    seed: int = 0,
) -> SemanticResult | None:
    """``semantic_clusters`` of the corpus at ``path`` with the quality stage's embeddings
    (None when any is missing), in memory bounded by a bucket and the k-means sample: up to
    ``sample_rows`` documents it is exactly ``semantic_clusters`` of the whole corpus; above,
    k-means is trained on the sample, every document goes to its nearest centre, the
    documents are written to disk by cluster (``balanced_buckets``), and the near-duplicate
    pairs, groups and representatives are found one bucket of whole clusters at a time
    (pairs never cross clusters, so that is the same computation)."""
    from builder.quality.semdedup import (
        assign,
        clusters_result,
        group_rows,
        kmeans_fit,
        semantic_clusters,
    )

    sample = max(2, sample_rows or KMEANS_SAMPLE)
    bucket_rows = bucket_rows or SEMDEDUP_BUCKET_ROWS
    with EmbeddedCorpus(
        ctx,
        path,
        SEMDEDUP_COLUMNS,
        bucket_rows=bucket_rows,
        text_lengths=True,
        name="semdedup",
        ahead=True,
    ) as corpus:
        if corpus.rows < 2:
            return None
        if corpus.rows <= sample:
            batches = list(corpus)
            if any(vectors is None for _, vectors in batches):
                return None
            docs = pl.concat([d for d, _ in batches]).sort("_row")
            order = np.argsort(np.concatenate([d["_row"].to_numpy() for d, _ in batches]))
            x = np.concatenate([v for _, v in batches if v is not None])[order]
            ids, lengths, verified = _doc_fields(docs)
            return semantic_clusters(
                ids, x, threshold=threshold, cluster_size=cluster_size,
                lengths=lengths, verified=verified, seed=seed,
            )  # fmt: skip
        # Pass 1: the k-means sample (the smallest id keys, in key order), then its centres.
        x = kmeans_sample(corpus, sample)
        if x is None:
            return None
        k = max(1, -(-corpus.rows // cluster_size))
        sample_labels, centres = kmeans_fit(x, min(k, sample), seed=seed)
        del x
        bucket_of = balanced_buckets(
            np.bincount(sample_labels, minlength=len(centres)), corpus.buckets
        )
        # Pass 2: every document to its nearest centre, written by cluster bucket.
        out = corpus.tmp / "clusters"
        with _BucketFiles(out) as files:
            for docs, vectors in corpus:
                assert vectors is not None
                ids, lengths, verified = _doc_fields(docs)
                labels = assign(vectors, centres)
                table = pa.table(
                    {
                        "id": ids,
                        "length": pa.array(lengths, pa.int64()),
                        "verified": pa.array(verified, pa.bool_()),
                        "label": pa.array(labels, pa.int64()),
                        "embedding": pa.FixedSizeListArray.from_arrays(
                            pa.array(vectors.ravel(), pa.float32()), vectors.shape[1]
                        ),
                    }
                )
                files.append(table, bucket_of[labels])

        # Pass 3: groups within each bucket of whole clusters, two buckets at a time.
        def bucket_groups(b: int) -> tuple[list[dict], int]:
            table = read_bucket(files.path(b))
            part = _frame(table.select(["id", "length", "verified", "label"]))
            x = _fixed_vectors(table.select(["embedding"]))
            del table
            return group_rows(
                part["id"].to_list(), x, part["label"].to_numpy(), threshold,
                lengths=part["length"].to_numpy(), verified=part["verified"].to_list(),
            )  # fmt: skip

        all_rows: list[dict] = []
        groups = 0
        with one_blas_thread(), ThreadPoolExecutor(max_workers=2) as pool:
            for rows, found in pool.map(bucket_groups, sorted(files.writers)):
                release_memory(collect=False)  # the bucket's arrays; its rows are kept
                all_rows += rows
                groups += found
        return clusters_result(all_rows, groups, min(k, sample))


def balanced_buckets(counts: np.ndarray, buckets: int) -> np.ndarray:
    """The bucket of each cluster, from its size (here: its members in the k-means
    sample, which stand for the corpus in proportion): largest first, each into the bucket
    holding the fewest so far, so no bucket passes the mean by more than one cluster.
    ``label % buckets`` let buckets grow with the corpus as clusters grew uneven (the
    largest bucket: 22k rows at 200k documents, 34.6k at 1M, for 20k on average)."""
    import heapq

    out = np.zeros(len(counts), dtype=np.int64)
    loads = [(0, b) for b in range(max(1, buckets))]
    for c in np.argsort(-np.asarray(counts), kind="stable").tolist():
        load, b = heapq.heappop(loads)
        out[c] = b
        heapq.heappush(loads, (load + int(counts[c]), b))
    return out


def _id_keys(ids: pl.Series) -> np.ndarray:
    """The sampling keys (``metrics.id_key``) of a column of ids."""
    from builder.quality.metrics import id_key

    values = ids.cast(pl.String).to_list()
    return np.fromiter((id_key(i) for i in values), dtype=np.uint64, count=len(values))


def smallest_keys(corpus: EmbeddedCorpus, sample: int) -> np.ndarray:
    """The ``sample`` smallest id keys of the corpus, sorted (repeats kept): one pass over
    its ids only, holding at most ``sample`` keys plus one read batch."""
    best = np.zeros(0, dtype=np.uint64)
    for table in iter_batches(corpus.files, batch_rows=corpus.read_rows, columns=["id"]):
        corpus._held(table.num_rows)
        best = np.concatenate([best, _id_keys(_frame(table)["id"])])
        if len(best) > sample:
            best = np.partition(best, sample - 1)[:sample]
    return np.sort(best)


def kmeans_sample(corpus: EmbeddedCorpus, sample: int) -> np.ndarray | None:
    """The vectors of the ``sample`` documents with the smallest id keys, in key order
    (equal keys: in the order the buckets yield them), or None when any is missing.

    The keys are chosen first from the ids alone (``smallest_keys``), so each sampled
    vector goes straight to its row of one ``(sample, d)`` array as its bucket passes: the
    sample is held once, never alongside a bucket's worth of candidates and their sorted
    copy. The rows are those a stable sort of every key would put first, so this is the
    sample (and the order) of keeping the smallest keys while streaming."""
    keys = smallest_keys(corpus, sample)
    top = keys[-1]
    x: np.ndarray | None = None
    filled = 0
    next_slot: dict[int, int] = {}  # key -> its next free row (equal keys: in turn)
    for docs, vectors in corpus:
        if vectors is None:
            return None
        batch = _id_keys(docs["id"])
        pos = np.flatnonzero(batch <= top)
        if x is None:
            x = np.empty((len(keys), vectors.shape[1]), dtype=np.float32)
        lo = np.searchsorted(keys, batch[pos], side="left")
        hi = np.searchsorted(keys, batch[pos], side="right")
        take, dest = [], []
        rows = zip(pos.tolist(), batch[pos].tolist(), lo.tolist(), hi.tolist(), strict=True)
        for p, key, a, b in rows:
            slot = next_slot.get(key, a)
            if slot < b:  # equal keys past the sample's last one stay out, as in a sort
                take.append(p)
                dest.append(slot)
                next_slot[key] = slot + 1
        x[dest] = vectors[take]
        filled += len(dest)
    assert x is not None and filled == len(keys)
    return x


#: Rows of a bucket of semantic dedup above the k-means sample: ~20 MB of 256-d vectors, held
#: two or three times while joined (its third pass: two buckets at a time).
SEMDEDUP_BUCKET_ROWS = 20_000

#: What semantic dedup streams besides the text lengths (``text_lengths``: never the texts).
SEMDEDUP_COLUMNS = ("id", "verified")


def _doc_fields(docs: pl.DataFrame) -> tuple[list[str], np.ndarray, list[bool | None]]:
    """Ids, text lengths and ``verified`` of a batch (the representative's order)."""
    ids = docs["id"].cast(pl.String).to_list()
    if LENGTH in docs.columns:
        lengths = docs[LENGTH].fill_null(0).to_numpy().astype(np.int64)
    else:
        lengths = np.zeros(len(ids), dtype=np.int64)
    verified = docs["verified"].to_list() if "verified" in docs.columns else [None] * len(ids)
    return ids, lengths, verified
