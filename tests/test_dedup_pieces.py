"""Dedup over pieces and buckets: same results as a plain datasketch reference, whatever the
pieces, buckets and workers; bounded band grouping; kill -9 mid-signatures then resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from datasketch import MinHash
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from builder.dedup import dedup_files, dedup_table, exact_key_text, shingles
from builder.dedup.plan import components
from builder.settings.dedup import DedupSettings
from tests.support.synthetic import Vocabulary, synthetic_corpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus() -> pl.DataFrame:
    """240 short documents with planted exact and near copies (both sides of J = 0.8)."""
    df = synthetic_corpus(
        240,
        seed=11,
        exact_frac=0.08,
        near_frac=0.2,
        edit_range=(0.005, 0.1),
        vocab=Vocabulary.make(size=3000, seed=5),
        words=(60, 120),
    )
    return df.select("id", "text")


def _reference(df: pl.DataFrame, s: DedupSettings) -> tuple[set[str], list[frozenset[str]]]:
    """Kept ids and clusters computed the obvious way: datasketch MinHash per document
    (``update_batch`` of its shingles), every pair of exact-group representatives compared
    band by band, verified by equal slots, joined by union-find, representative = longest
    text then smallest id."""
    ids, texts = df["id"].to_list(), df["text"].to_list()
    n = len(ids)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        parent[find(a)] = find(b)

    better = sorted(range(n), key=lambda i: (-len(texts[i]), ids[i]))
    first_of: dict[str, int] = {}
    reps = []
    for i in better:  # exact groups: the best-ranked member represents
        key = exact_key_text(texts[i])
        if key in first_of:
            union(i, first_of[key])
        else:
            first_of[key] = i
            reps.append(i)
    sigs = {}
    for i in reps:
        grams = shingles(texts[i], s.shingle_size)
        if grams:
            mh = MinHash(num_perm=s.num_perm, seed=s.seed)
            mh.update_batch([g.encode("utf-8") for g in grams])
            sigs[i] = mh.digest()
    need = int(np.ceil(s.threshold * s.num_perm - 1e-9))
    for a, b in combinations(sorted(sigs), 2):
        x, y = sigs[a], sigs[b]
        if (
            any(
                np.array_equal(x[k * s.rows : (k + 1) * s.rows], y[k * s.rows : (k + 1) * s.rows])
                for k in range(s.bands)
            )
            and int((x == y).sum()) >= need
        ):
            union(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    kept = {ids[min(g, key=lambda i: (-len(texts[i]), ids[i]))] for g in groups.values()}
    clusters = [frozenset(ids[i] for i in g) for g in groups.values() if len(g) > 1]
    return kept, sorted(clusters, key=sorted)


def _clusters(frame: pl.DataFrame) -> list[frozenset[str]]:
    members = frame.group_by("cluster_id").agg(pl.col("id"))["id"].to_list()
    return sorted((frozenset(m) for m in members), key=sorted)


@pytest.mark.parametrize(
    ("partition_size", "buckets", "workers"), [(10_000, 1, 1), (37, 5, 1), (50, 3, 2)]
)
def test_results_equal_a_datasketch_reference(
    corpus: pl.DataFrame, partition_size: int, buckets: int, workers: int
) -> None:
    """datasketch mode (signatures equal to datasketch.MinHash): kept ids and clusters are
    the reference's, for one piece and one bucket as for many of each."""
    settings = DedupSettings(mode="datasketch", partition_size=partition_size)
    kept, clusters = _reference(corpus, settings)
    assert len(clusters) >= 20  # the corpus does have exact and near duplicates
    result = dedup_table(corpus, settings, workers=workers, buckets=buckets)
    assert result.kept is not None
    assert set(result.kept["id"].to_list()) == kept
    assert _clusters(result.clusters) == clusters


def _same_outputs(a: Path, b: Path) -> None:
    kept_a, kept_b = pl.read_parquet(a / "kept.parquet"), pl.read_parquet(b / "kept.parquet")
    assert kept_a.equals(kept_b)
    assert (a / "clusters.parquet").read_bytes() == (b / "clusters.parquet").read_bytes()


def test_band_grouping_holds_one_bucket_at_a_time(corpus: pl.DataFrame, tmp_path: Path) -> None:
    """Eight buckets give the same files as one, and no bucket task held more than a
    fraction of the band entries (counted by the tasks, not timed)."""
    src = tmp_path / "in.parquet"
    corpus.write_parquet(src, row_group_size=40)
    settings = DedupSettings(partition_size=40)
    one = dedup_files(src, tmp_path / "one", settings, workers=1, buckets=1)
    eight = dedup_files(src, tmp_path / "eight", settings, workers=1, buckets=8)
    _same_outputs(tmp_path / "one", tmp_path / "eight")
    assert one.stats.buckets == 1 and eight.stats.buckets == 8
    assert one.stats.pieces == eight.stats.pieces >= 4
    # One bucket holds every candidate's entries (one per band); eight hold ~1/8 each.
    total = one.stats.largest_bucket_entries
    assert total % settings.bands == 0 and total > 100 * settings.bands
    assert eight.stats.largest_bucket_entries * 4 < total
    assert not (tmp_path / "one" / "dedup-partial").exists()  # removed once finished


def _corpus_cli(tmp_path: Path, *args: str, fault: str | None = None):
    env = {k: v for k, v in os.environ.items() if k != "CORPUS_FAULT"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if fault:
        env["CORPUS_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "builder", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_kill_9_during_signatures_then_resume(
    corpus: pl.DataFrame, tmp_path: Path, suffix: str
) -> None:
    """`corpus dedup` killed (SIGKILL, at the fault point after the 2nd finished piece) and
    run again: the same outputs as an uninterrupted run, and the two finished pieces were
    reused, not recomputed (the counter of reused pieces)."""
    (tmp_path / "corpus.toml").write_text("[dedup]\npartition_size = 40\n")
    src = tmp_path / f"in.{suffix}"
    if suffix == "jsonl":
        corpus.write_ndjson(src)
    else:
        corpus.write_parquet(src, row_group_size=40)
    args = ["dedup", src.name, "--workers", "1", "--config", "corpus.toml"]

    clean = _corpus_cli(tmp_path, *args, "-o", "clean")
    assert clean.returncode == 0, clean.stderr
    assert "resumed" not in clean.stdout

    killed = _corpus_cli(tmp_path, *args, "-o", "out", fault="dedup.piece:2")
    assert killed.returncode == -9, killed.stderr
    work = tmp_path / "out" / "dedup-partial"
    done = sorted(p.name for p in work.glob("*.done.json"))
    assert done == ["p00000.done.json", "p00001.done.json"]
    key = json.loads((work / "key.json").read_text())
    pieces = len(key["key"]["pieces"])
    assert pieces >= 5
    assert not (tmp_path / "out" / "kept.parquet").exists()

    resumed = _corpus_cli(tmp_path, *args, "-o", "out")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed: 2 of {pieces} signature pieces reused" in resumed.stdout
    _same_outputs(tmp_path / "clean", tmp_path / "out")
    assert not work.exists()


def test_changed_settings_do_not_reuse_pieces(corpus: pl.DataFrame, tmp_path: Path) -> None:
    """Pieces left by a killed run are only reused for the same input and signature
    settings: another threshold keeps them (it does not change signatures; their files are
    the very same), another seed starts afresh."""
    (tmp_path / "corpus.toml").write_text("[dedup]\npartition_size = 40\n")
    corpus.write_ndjson(tmp_path / "in.jsonl")
    args = ["dedup", "in.jsonl", "-o", "out", "--workers", "1", "--config", "corpus.toml"]
    assert _corpus_cli(tmp_path, *args, fault="dedup.piece:3").returncode == -9
    work = tmp_path / "out" / "dedup-partial"

    def identity() -> dict[str, tuple[int, int]]:
        return {
            p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in work.iterdir()
            if p.name.startswith(("p00000.", "p00001.", "p00002."))
        }

    before = identity()
    assert len(before) == 3 * 6  # done, sig, rows, bands, index, table (JSONL rows)
    # Killed again once the 3 finished pieces were reused and a 4th computed.
    other = _corpus_cli(tmp_path, *args, "--threshold", "0.9", fault="dedup.piece:4")
    assert other.returncode == -9
    assert identity() == before
    assert len(list(work.glob("*.done.json"))) == 4
    fresh = _corpus_cli(tmp_path, *args, "--seed", "2")
    assert fresh.returncode == 0, fresh.stderr
    assert "resumed" not in fresh.stdout


@hypothesis_settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 60),
    edges=st.lists(st.tuples(st.integers(0, 59), st.integers(0, 59)), max_size=120),
)
def test_components_are_scipys_connected_components(n: int, edges: list[tuple[int, int]]) -> None:
    """The numpy union-find that joins verified pairs partitions the nodes exactly as
    scipy's connected_components, each label being the smallest node of its component."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    e = np.array([(a % n, b % n) for a, b in edges], dtype=np.int64).reshape(-1, 2)
    labels = components(n, e)
    graph = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    _, ref = connected_components(graph, directed=False)
    ours = {frozenset(np.flatnonzero(labels == k).tolist()) for k in set(labels.tolist())}
    theirs = {frozenset(np.flatnonzero(ref == k).tolist()) for k in set(ref.tolist())}
    assert ours == theirs
    assert all(int(labels[i]) == min(c) for c in ours for i in c)


def test_byte_classes_equal_the_lookup_tables() -> None:
    """Word and ASCII-space bytes by arithmetic equal the tables built from str.isspace and
    the word definition, for all 256 byte values."""
    from builder.dedup import normalize

    every = np.arange(256, dtype=np.uint8)
    assert np.array_equal(normalize._word_bytes(every), normalize._WORD_LUT)
    assert np.array_equal(normalize._ascii_space(every), normalize._SPACE_LUT)


def test_a_piece_whose_files_changed_is_computed_again(
    corpus: pl.DataFrame, tmp_path: Path
) -> None:
    """A finished piece is reused only while its files have the sizes its marker recorded
    (a power cut can lose unsynced scratch data): a truncated signature file means the piece
    is computed again, and the result is still the uninterrupted one."""
    (tmp_path / "corpus.toml").write_text("[dedup]\npartition_size = 40\n")
    corpus.write_ndjson(tmp_path / "in.jsonl")
    args = ["dedup", "in.jsonl", "--workers", "1", "--config", "corpus.toml"]
    assert _corpus_cli(tmp_path, *args, "-o", "clean").returncode == 0
    assert _corpus_cli(tmp_path, *args, "-o", "out", fault="dedup.piece:3").returncode == -9
    sig = tmp_path / "out" / "dedup-partial" / "p00001.sig.npy"
    sig.write_bytes(sig.read_bytes()[:100])
    resumed = _corpus_cli(tmp_path, *args, "-o", "out")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed: 2 of" in resumed.stdout  # pieces 0 and 2; piece 1 computed again
    _same_outputs(tmp_path / "clean", tmp_path / "out")


def test_default_buckets_are_bounded_by_entries_not_by_the_corpus(
    corpus: pl.DataFrame, tmp_path: Path, monkeypatch
) -> None:
    """The default bucket count is the rows' band entries over ``BUCKET_ENTRIES``: with a
    bound of 300 entries the 240 rows spread over many buckets, none of which held much more
    than the bound (counted by the tasks), and the files equal those of one bucket."""
    import builder.dedup.buckets as buckets

    src = tmp_path / "in.parquet"
    corpus.write_parquet(src, row_group_size=40)
    settings = DedupSettings(partition_size=40)
    one = dedup_files(src, tmp_path / "one", settings, workers=1, buckets=1)
    monkeypatch.setattr(buckets, "BUCKET_ENTRIES", 300)
    small = dedup_files(src, tmp_path / "small", settings, workers=1)
    _same_outputs(tmp_path / "one", tmp_path / "small")
    assert small.stats.buckets == -(-240 * settings.bands // 300)
    assert one.stats.largest_bucket_entries > 4 * 300
    assert 0 < small.stats.largest_bucket_entries <= 2 * 300


@st.composite
def _plan_inputs(draw):
    """Rows with repeated exact keys, tied lengths, verified flags (or none), ids in another
    order than the rows, some without words; signatures of 8 slots from 3 values (so pairs
    often reach the 0.75 threshold)."""
    n = draw(st.integers(1, 40))
    keys = draw(st.lists(st.integers(0, max(1, n // 3)), min_size=n, max_size=n))
    exact = np.array([[k, k * 7] for k in keys], dtype=np.uint64)
    lengths = np.array(draw(st.lists(st.integers(1, 4), min_size=n, max_size=n)), np.int64)
    shingles = np.array(draw(st.lists(st.sampled_from([0, 5, 9]), min_size=n, max_size=n)))
    ids = [f"id{v:03d}" for v in draw(st.permutations(range(n)))]
    verified = draw(
        st.one_of(st.none(), st.lists(st.sampled_from([True, False, None]), min_size=n, max_size=n))
    )
    sigs = np.array(
        draw(st.lists(st.lists(st.integers(0, 2), min_size=8, max_size=8), min_size=n, max_size=n))
    )
    for row, key in enumerate(keys):  # an exact key's rows have one signature (one text)
        sigs[row] = sigs[keys.index(key)]
    exact_on = draw(st.booleans())
    return n, exact, lengths, shingles, ids, verified, sigs, exact_on


@hypothesis_settings(max_examples=300, deadline=None)
@given(_plan_inputs())
def test_the_plan_over_duplicate_groups_equals_the_plan_over_every_row(inputs) -> None:
    """``make_plan`` names only the rows of duplicate groups (its arrays follow the
    duplicates, not the corpus): every table it returns equals the dense plan's."""
    from builder.dedup.lsh import pair_jaccard
    from builder.dedup.plan import RowArrays, make_plan, names_of
    from tests.support.dense_plan import dense_plan

    n, exact, lengths, shingles, ids, verified, sigs, exact_on = inputs
    rows = RowArrays(exact, lengths, shingles)
    id_col = pl.Series("id", ids)
    ver_col = None if verified is None else pl.Series("verified", verified, dtype=pl.Boolean)
    settings = DedupSettings(num_perm=8, bands=4, rows=2, threshold=0.75, exact=exact_on)
    asked: list[np.ndarray] = []

    def find_pairs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        asked.append(mask.copy())
        c = np.flatnonzero(mask)
        pairs = np.array([(a, b) for a, b in combinations(c.tolist(), 2)], dtype=np.int64)
        pairs = pairs.reshape(-1, 2)
        return pairs, pair_jaccard(sigs, pairs)

    named: list[int] = []
    names = names_of(id_col, ver_col)

    def counted(r: np.ndarray):
        named.append(len(r))
        return names(r)

    want = dense_plan(rows, id_col, ver_col, sigs, settings, find_pairs)
    got = make_plan(rows, counted, sigs, settings, find_pairs)
    assert np.array_equal(asked[0], asked[1])  # the same candidates for the band grouping
    assert np.array_equal(got.keep, want.keep)
    for name in ("clusters", "removed", "rep_cluster"):
        assert getattr(got, name).equals(getattr(want, name)), name
    assert (got.candidate_pairs, got.verified_pairs) == (want.candidate_pairs, want.verified_pairs)
    members = want.clusters.height
    assert max(named) <= members  # never a name per row, only per member of a cluster
    removed = want.clusters.filter("removed")
    by_id = dict(zip(ids, range(n), strict=True))
    assert got.removed_rows.tolist() == sorted(by_id[i] for i in removed["id"])
    kinds = dict(zip(removed["id"], removed["kind"], strict=True))
    assert got.removed_exact.tolist() == [kinds[ids[r]] == "exact" for r in got.removed_rows]
