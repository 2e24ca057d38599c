"""Diversity you can see: lexical and embedding diversity per taxonomy node and corpus.

Following Shaib et al. ("Standardizing the measurement of text diversity", 2024), several
measures are reported together because each misses something:

* ``compression_ratio``: bytes of the concatenated texts / bytes gzip-compressed (zlib,
  level 6). Repetitive text compresses well: higher = less diverse (human corpora ~2.5-3).
* ``distinct_1..4``: distinct word n-grams / all word n-grams (lowercased words): lower =
  more reuse of the same phrases.
* ``mean_similarity``: mean pairwise cosine of the documents' unit embeddings, computed
  exactly in O(n d) as (|sum|^2 - n) / (n (n - 1)).
* ``vendi``: the Vendi score (Friedman & Dieng 2023), exp of the Shannon entropy of the
  eigenvalues of K/n with K the cosine-similarity matrix: the effective number of distinct
  documents (1 when all are the same, n when all are orthogonal). The non-zero eigenvalues
  of X X^T / n equal those of X^T X / n, so it costs O(n d^2), not O(n^3).

Lexical measures use at most ``sample`` (``LEXICAL_SAMPLE``, 100; ``[output] diversity_sample``)
documents per node: the ones with the smallest id hash, a deterministic sample, as peer tools
measure diversity on a fixed-size sample. Their cost is then bounded by the taxonomy, not the
corpus (at 200k documents a cap of 500 compressed and n-grammed 301k sampled texts, every
topic's documents; 100 takes 127k), and every node with at least that many documents is
measured on the same number of them (distinct-n falls as a sample grows, so equal samples
compare fairly). Embedding measures use every document. ``embedding_map``
projects embeddings to 2-D (PCA by SVD) for the report's map. Pure functions; no I/O.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from builder.diversity import ALL_NODE, expand_nodes
from builder.quality.vendi import (
    GRAM_ROWS,
    SUM_BLOCK,
    GramSums,
    vendi_from_gram,
    vendi_of,
)
from builder.quality.vendi import vendi_score as vendi_score  # public here too
from builder.util.blas import one_blas_thread

NGRAMS = (1, 2, 3, 4)
#: Documents per node the lexical measures (compression ratio, distinct-n) use by default
#: (``[output] diversity_sample``'s default).
LEXICAL_SAMPLE = 100
METRIC_COLUMNS = (
    "docs",
    "compression_ratio",
    *(f"distinct_{n}" for n in NGRAMS),
    "mean_similarity",
    "vendi",
)


def compression_ratio(texts: Sequence[str]) -> float | None:
    """Raw / compressed size of the texts joined by newlines (None: no text)."""
    data = "\n".join(t or "" for t in texts).encode("utf-8")
    if not data:
        return None
    return round(len(data) / len(zlib.compress(data, 6)), 4)


def _distincts(texts: Sequence[str], ngrams: Sequence[int] = NGRAMS) -> dict[int, float | None]:
    """``distinct_n`` for each n in ``ngrams``, tokenizing the texts once.

    Words are Polars' ``\\w+`` matches of the lowercased text, hashed to 64 bits; an n-gram
    is a polynomial hash of its words' hashes (mod 2^64), formed only within a document;
    distinct ones are counted by ``_count_distinct``.
    """
    words = pl.Series(list(texts), dtype=pl.String).fill_null("").str.to_lowercase()
    words = words.str.extract_all(r"\w+")
    lengths = words.list.len().to_numpy().astype(np.int64)
    hashes = words.explode().drop_nulls().hash(seed=0).to_numpy()
    total = len(hashes)
    # words left in their document from each position (an n-gram needs n of them)
    left = np.repeat(lengths, lengths) - (
        np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    )
    out: dict[int, float | None] = {}
    for n in ngrams:
        if total < n:
            out[n] = None
            continue
        grams = hashes[: total - n + 1].copy()
        for j in range(1, n):
            grams = grams * np.uint64(1_000_003) + hashes[j : total - n + 1 + j]
        grams = grams[left[: total - n + 1] >= n]
        out[n] = round(_count_distinct(grams) / len(grams), 4) if len(grams) else None
    return out


def _count_distinct(values: np.ndarray) -> int:
    """The distinct values of a non-empty array, from one sort. A node sample's ~20k
    n-grams: Polars' ``n_unique`` spent ~5x the CPU, mostly dispatching to its thread pool
    (``np.unique`` is slower still); the count is the same."""
    ordered = np.sort(values)
    return int(np.count_nonzero(ordered[1:] != ordered[:-1])) + 1


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Distinct word n-grams / all word n-grams over the texts (None: no n-gram)."""
    return _distincts(texts, (n,))[n]


def mean_similarity(x: np.ndarray) -> float | None:
    """Mean cosine over all pairs of distinct rows of unit vectors ``x`` (None: < 2 rows)."""
    s = x.sum(axis=0, dtype=np.float64)
    return _mean_similarity(s, float(np.einsum("ij,ij->", x, x, dtype=np.float64)), x.shape[0])


def _mean_similarity(total: np.ndarray, self_sims: float, n: int) -> float | None:
    """``mean_similarity`` from the sum of the rows and the sum of their squared norms."""
    if n < 2:
        return None
    return round((float(total @ total) - self_sims) / (n * (n - 1)), 4)


def id_key(doc_id: str) -> int:
    """The deterministic sampling key of a document (smallest keys are sampled)."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "big")


def _sample(ids: list[str], limit: int) -> list[int]:
    if len(ids) <= limit:
        return list(range(len(ids)))
    keyed = sorted(range(len(ids)), key=lambda i: id_key(ids[i]))
    return sorted(keyed[:limit])


def node_diversity(
    frame: pl.DataFrame,
    embeddings: np.ndarray | None = None,
    *,
    text_column: str = "text",
    id_column: str = "id",
    sample: int = LEXICAL_SAMPLE,
    min_docs: int = 2,
) -> pl.DataFrame:
    """``METRIC_COLUMNS`` per taxonomy node (every ancestor of each ``taxonomy_path``) and for
    the corpus (node ``(all)``). ``embeddings`` rows follow ``frame``'s rows. The whole
    frame as one batch of ``DiversityAccumulator``."""
    acc = DiversityAccumulator(sample=sample, min_docs=min_docs, map_limit=0)
    paths = [pl.col("taxonomy_path")] if "taxonomy_path" in frame.columns else []
    rows = frame.select(
        pl.col(id_column).cast(pl.String).alias("id"), pl.col(text_column).alias("text"), *paths
    ).with_row_index("_row")
    acc.add(rows, embeddings)
    return acc.nodes()


def embedding_map(
    embeddings: np.ndarray, labels: Sequence[str], ids: Sequence[str], *, limit: int = 5000
) -> pl.DataFrame:
    """2-D PCA coordinates (x, y) of at most ``limit`` documents with their label and id."""
    ids = list(ids)
    picked = np.array(_sample(ids, limit), dtype=np.int64)
    vectors = embeddings[picked] if len(picked) else np.zeros((0, 2))
    return _project([ids[i] for i in picked], [str(labels[i]) for i in picked], vectors)


def _project(ids: list[str], labels: list[str], vectors: np.ndarray) -> pl.DataFrame:
    """The map's rows: ``ids`` with their labels and 2-D PCA coordinates of ``vectors``."""
    if not ids:
        return pl.DataFrame(
            schema={"id": pl.String, "label": pl.String, "x": pl.Float32, "y": pl.Float32}
        )
    x = vectors.astype(np.float64)
    x = x - x.mean(axis=0)
    if len(ids) >= 2:
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        xy = x @ vt[:2].T
        if xy.shape[1] < 2:
            xy = np.hstack([xy, np.zeros((len(ids), 1))])
    else:
        xy = np.zeros((1, 2))
    return pl.DataFrame(
        {
            "id": ids,
            "label": labels,
            "x": xy[:, 0].astype(np.float32),
            "y": xy[:, 1].astype(np.float32),
        }
    )


@dataclass
class _NodeSums:
    """What one node's metrics need, summed over the batches seen so far."""

    depth: int
    docs: int = 0
    total: np.ndarray | None = None  # sum of the unit vectors (float64)
    self_sims: float = 0.0
    gram: np.ndarray | None = None  # X^T X (d x d, float64)
    # the ``sample`` documents with the smallest id keys: their keys, corpus rows and (with
    # ``keep_texts``) texts, as arrays: 16 bytes a document, not a Python tuple of ~130
    # (a cap of 500 held 301k entries at 200k documents: every one in its topic's sample)
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    texts: np.ndarray | None = None

    def keep(
        self, keys: np.ndarray, rows: np.ndarray, texts: np.ndarray | None, limit: int
    ) -> None:
        """Add candidates and keep the ``limit`` with the smallest keys (on equal keys the
        one seen first, as the heap this replaces did)."""
        k = np.concatenate([self.keys, keys])
        r = np.concatenate([self.rows, rows])
        t = None
        if texts is not None:
            t = texts if self.texts is None else np.concatenate([self.texts, texts])
        if len(k) > limit:
            keep = np.argsort(k, kind="stable")[:limit]
            k, r = k[keep], r[keep]
            t = t[keep] if t is not None else None
        self.keys, self.rows, self.texts = k, r, t


class DiversityAccumulator:
    """``node_diversity`` and ``embedding_map`` over a corpus read in batches, in any order.

    Memory is bounded by the taxonomy, not the corpus: per node a count, an embedding sum,
    a d x d Gram matrix (or, with ``gram_nodes``, none: ``nodes`` sums them again over the
    batches, that many nodes at a time) and the ``sample`` texts with the smallest id keys
    (or their row numbers only, ``keep_texts=False``); for the map the
    ``map_limit`` vectors with the smallest keys (0: no map). Every row carries its corpus
    row number (``row_column``), so samples are put back in corpus order and any split into
    batches gives the result of the whole corpus in one batch (``node_diversity``; the map
    equals ``embedding_map``), up to float summation order. One batch without embeddings
    (None) turns the embedding measures off for the whole corpus.
    """

    def __init__(
        self,
        *,
        sample: int = LEXICAL_SAMPLE,
        min_docs: int = 2,
        map_limit: int = 5000,
        keep_texts: bool = True,
        gram_nodes: int | None = None,
    ) -> None:
        self.sample = sample
        #: None: every node's Gram matrix is summed during ``add`` (d x d float64 each,
        #: 512 KB at d = 256: ~650 MB for a 1,272-node taxonomy). A number: ``add`` keeps
        #: none, and ``nodes(batches=...)`` sums them again over the batches for that many
        #: nodes at a time (same batches, same order: the same sums).
        self.gram_nodes = gram_nodes
        #: False: the samples hold row numbers only and ``nodes`` fetches their texts.
        self.keep_texts = keep_texts
        self.min_docs = min_docs
        self.map_limit = map_limit
        self.embedded = True
        #: The most Gram matrices held at once by a ``nodes`` pass (``gram_nodes``).
        self.max_grams_held = 0
        self._nodes: dict[str, _NodeSums] = {}
        #: With ``gram_nodes``: each batch's nodes and their rows, as ``add`` found them (the
        #: Vendi passes are given the same batches again, and start from these).
        self._batch_nodes: list[list[tuple[str, np.ndarray]]] = []
        self._map: list[tuple[int, int, str, str, np.ndarray]] = []  # max-heap by -key

    def add(
        self,
        frame: pl.DataFrame,
        embeddings: np.ndarray | None,
        *,
        row_column: str = "_row",
        label_column: str = "discipline",
    ) -> None:
        """Count one batch: ``frame`` has ``id``, ``text``, ``taxonomy_path``, the corpus
        row number and (for the map) a label column; ``embeddings`` rows follow it."""
        found = list(_node_rows(frame)) if frame.height else []
        if self.gram_nodes is not None:  # one entry per batch, so the passes' k-th is this
            self._batch_nodes.append([(node, idx) for node, _depth, idx in found])
        if frame.height == 0:
            return
        if embeddings is None:
            self.embedded = False
            self._map.clear()
        ids = frame["id"].cast(pl.String).to_list()
        keys = [id_key(i) for i in ids]
        key_array = np.array(keys, dtype=np.uint64)
        row_array = frame[row_column].to_numpy().astype(np.int64, copy=False)
        texts = None
        if self.keep_texts:
            texts = np.empty(frame.height, dtype=object)
            texts[:] = frame["text"].fill_null("").to_list()
        rows = row_array.tolist()
        for node, depth, idx in found:
            sums = self._nodes.get(node)
            if sums is None:
                sums = self._nodes[node] = _NodeSums(int(depth))
            sums.docs += len(idx)
            sums.keep(
                key_array[idx],
                row_array[idx],
                texts[idx] if texts is not None else None,
                self.sample,
            )
            if self.embedded and embeddings is not None:
                total, gram, self_sims = _block_sums(embeddings, idx, self.gram_nodes is None)
                sums.total = total if sums.total is None else sums.total + total
                if gram is not None:
                    if sums.gram is None:
                        sums.gram = gram
                    else:
                        sums.gram += gram  # in place: the same sum, no 512 KB temporary
                sums.self_sims += self_sims
        if self.embedded and embeddings is not None and self.map_limit > 0:
            labels = (
                frame[label_column].fill_null("?").cast(pl.String).to_list()
                if label_column in frame.columns
                else ["?"] * frame.height
            )
            for i in range(frame.height):
                # a copy: a view would keep the whole batch's matrix alive
                item = (-keys[i], rows[i], ids[i], labels[i], embeddings[i].copy())
                _keep_smallest(self._map, item, self.map_limit)

    def nodes(
        self,
        *,
        batch_rows: int = 50_000,
        groups: Callable[[list[set[int]]], Iterable[dict[int, str]]] | None = None,
        batches: Callable[[], Iterable[tuple[pl.DataFrame, np.ndarray | None]]] | None = None,
    ) -> pl.DataFrame:
        """``METRIC_COLUMNS`` per node, as ``node_diversity`` returns them.

        Without kept texts (``keep_texts=False``), ``groups(rows of each group)`` yields
        each group's texts in order (``EmbeddedCorpus.text_groups``: one pass over the
        corpus, not one per group); nodes are measured a group at a time, each group's
        samples holding at most ``batch_rows`` rows (or one node's), so the texts held are
        bounded by that, not by the corpus (every document of a 200k corpus is in some
        topic's sample). Nodes are measured on a small thread pool: compression (zlib), the
        n-gram counts (Polars) and the eigenvalues (LAPACK) release the GIL, so both cores
        work; LAPACK itself runs on one thread meanwhile (``one_blas_thread``).
        With ``gram_nodes``, ``batches()`` yields the batches ``add`` was given again, in
        the same order, for the Vendi scores (``_vendi_in_passes``)."""
        with one_blas_thread():
            return self._nodes_measured(batch_rows, groups, batches)

    def _nodes_measured(
        self,
        batch_rows: int,
        groups: Callable[[list[set[int]]], Iterable[dict[int, str]]] | None,
        batches: Callable[[], Iterable[tuple[pl.DataFrame, np.ndarray | None]]] | None,
    ) -> pl.DataFrame:
        from concurrent.futures import ThreadPoolExecutor

        todo = [
            (node, sums)
            for node, sums in self._nodes.items()
            if sums.docs >= self.min_docs or node == ALL_NODE
        ]
        vendi: dict[str, float | None] | None = None
        if self.gram_nodes is not None and self.embedded:
            if batches is None:
                raise ValueError("nodes() needs batches when the accumulator keeps no Grams")
            vendi = self._vendi_in_passes(todo, batches)
        if groups is None and not self.keep_texts:
            raise ValueError("nodes() needs groups when the accumulator keeps no texts")
        parts: list[list[tuple[str, _NodeSums]]] = [[]]
        held = 0
        for item in todo:
            size = len(item[1].rows)
            if groups is not None and parts[-1] and held + size > batch_rows:
                parts.append([])
                held = 0
            parts[-1].append(item)
            held += size
        texts_of: Iterator[dict[int, str] | None]
        if groups is not None:
            wanted = [{row for _, sums in part for row in sums.rows.tolist()} for part in parts]
            texts_of = iter(groups(wanted))
        else:
            texts_of = (None for _ in parts)
        out: list[dict] = []
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            for part in parts:
                texts = next(texts_of)
                measure = functools.partial(self._node_metrics, texts=texts, vendi=vendi)
                out += pool.map(measure, part)
                del texts
        schema = {"node": pl.String, "depth": pl.Int32, "docs": pl.Int64}
        schema.update({c: pl.Float64 for c in METRIC_COLUMNS if c != "docs"})
        return pl.DataFrame(out, schema=schema).sort("depth", "node")

    def _vendi_in_passes(
        self,
        todo: list[tuple[str, _NodeSums]],
        batches: Callable[[], Iterable[tuple[pl.DataFrame, np.ndarray | None]]],
    ) -> dict[str, float | None]:
        """The Vendi score of each node in ``todo`` from its rows in ``batches()``, a few
        nodes per pass: what a pass holds is bounded by ``gram_nodes`` d x d float64
        matrices (with their waiting rows), whatever the taxonomy.

        A node of ``n >= d`` documents gets its Gram matrix ``X^T X`` (d x d), its rows
        gathered over the batches and multiplied ``GRAM_ROWS`` or more at a time (a topic
        has a few rows in each batch: one product and sum per batch cost ~6x the arithmetic
        it needs); the sums are those of ``add`` up to float summation order. A node of
        fewer documents (most topics) keeps its rows (n x d) and gets the kernel ``X X^T``
        (n x n): the same non-zero eigenvalues, a smaller eigenvalue problem and less
        memory, so a pass measures more of them."""
        from concurrent.futures import ThreadPoolExecutor

        names = [node for node, sums in todo if sums.total is not None]
        if not names:
            return {}
        docs = {node: sums.docs for node, sums in todo}
        d = len(next(sums.total for _, sums in todo if sums.total is not None))
        # what a node holds in a pass: its Gram and waiting rows, or its rows and kernel
        big = d * d * 8 + GRAM_ROWS * d * 4
        cost = {n: (docs[n] * d * 4 if docs[n] < d else big) for n in names}
        budget = max(1, self.gram_nodes or 1) * big
        chunks: list[list[str]] = [[]]
        used = 0
        for node in names:
            if chunks[-1] and used + cost[node] > budget:
                chunks.append([])
                used = 0
            chunks[-1].append(node)
            used += cost[node]
        out: dict[str, float | None] = {}
        self.max_grams_held = 0
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            for chunk in chunks:
                members = set(chunk)
                sums = GramSums(small={n for n in chunk if docs[n] < d})
                # each batch with its nodes and their rows, as ``add`` found them (every pass
                # is given the same batches: a few MB at 200k documents, ~0.3 s of each pass)
                for (frame, embeddings), found in zip(batches(), self._batch_nodes, strict=True):
                    if embeddings is None or frame.height == 0:
                        continue
                    for node, idx in found:
                        if node in members:
                            sums.add(node, embeddings[idx])
                    self.max_grams_held = max(self.max_grams_held, len(sums.grams))
                grams = sums.finish()
                self.max_grams_held = max(self.max_grams_held, len(grams))
                ordered = [n for n in chunk if n in grams]
                # a small node's kernel is made in the task: one at a time per thread
                scores = pool.map(
                    vendi_of, [grams.pop(n) for n in ordered], [docs[n] for n in ordered]
                )
                out.update(zip(ordered, scores, strict=True))
        return out

    def _node_metrics(
        self,
        item: tuple[str, _NodeSums],
        texts: dict[int, str] | None = None,
        vendi: dict[str, float | None] | None = None,
    ) -> dict:
        node, sums = item
        order = np.argsort(sums.rows, kind="stable")  # corpus order
        if texts is None:
            kept = sums.texts[order].tolist() if sums.texts is not None else []
            some = [text or "" for text in kept]
        else:
            some = [texts[row] for row in sums.rows[order].tolist()]
        metrics: dict = {"docs": sums.docs, "compression_ratio": compression_ratio(some)}
        for n, value in _distincts(some).items():
            metrics[f"distinct_{n}"] = value
        embedded = self.embedded and sums.total is not None
        metrics["mean_similarity"] = (
            _mean_similarity(sums.total, sums.self_sims, sums.docs) if embedded else None
        )
        if not embedded:
            metrics["vendi"] = None
        elif vendi is not None:
            metrics["vendi"] = vendi.get(node)
        else:
            gram = sums.gram
            metrics["vendi"] = vendi_from_gram(gram, sums.docs) if gram is not None else None
        return {"node": node, "depth": sums.depth, **metrics}

    def map(self) -> pl.DataFrame:
        """The embedding map, as ``embedding_map`` returns it (empty without embeddings)."""
        picked = sorted(self._map, key=lambda item: item[1]) if self.embedded else []
        vectors = np.stack([item[4] for item in picked]) if picked else np.zeros((0, 2))
        return _project([item[2] for item in picked], [item[3] for item in picked], vectors)


def _block_sums(
    embeddings: np.ndarray, idx: np.ndarray, with_gram: bool
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """The sum of the rows ``idx`` of ``embeddings``, their Gram matrix ``X^T X`` (when
    ``with_gram``) and the sum of their squared norms, in float64, ``SUM_BLOCK`` rows at a
    time (the same blocks in ``add`` and in ``nodes``' passes: the same sums)."""
    d = embeddings.shape[1]
    total = np.zeros(d, dtype=np.float64)
    gram = np.zeros((d, d), dtype=np.float64) if with_gram else None
    self_sims = 0.0
    for lo in range(0, len(idx), SUM_BLOCK):
        x = embeddings[idx[lo : lo + SUM_BLOCK]].astype(np.float64)
        total += x.sum(axis=0)
        if gram is not None:
            gram += x.T @ x
        self_sims += float(np.einsum("ij,ij->", x, x))
    return total, gram, self_sims


def _node_rows(frame: pl.DataFrame) -> Iterator[tuple[str, int, np.ndarray]]:
    """(node, depth, row indices) of every taxonomy node of the batch's documents (each
    ``taxonomy_path`` and its ancestors, and ``(all)``), in first-seen order. One grouped
    aggregation and one split of its flat row list, not a Polars frame per node."""
    base = frame.select(
        *([pl.col("taxonomy_path")] if "taxonomy_path" in frame.columns else [])
    ).with_row_index("_i")
    expanded = expand_nodes(base).select("node", "depth", "_i")
    grouped = expanded.group_by(["node", "depth"], maintain_order=True).agg(pl.col("_i"))
    if grouped.height == 0:
        return
    lengths = grouped["_i"].list.len().to_numpy()
    rows = np.split(grouped["_i"].explode().to_numpy(), np.cumsum(lengths)[:-1])
    names = grouped["node"].cast(pl.String).to_list()
    depths = grouped["depth"].to_list()
    for node, depth, idx in zip(names, depths, rows, strict=True):
        yield str(node), int(depth), idx


def _keep_smallest(heap: list, item: tuple, limit: int) -> None:
    """Keep in ``heap`` (a max-heap of items whose first field is minus the key) the
    ``limit`` items with the smallest keys."""
    if len(heap) < limit:
        heapq.heappush(heap, item)
    elif item[0] > heap[0][0]:
        heapq.heapreplace(heap, item)
