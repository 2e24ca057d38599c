"""Dedup: planted duplicates found, distinct documents kept, provenance, determinism, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from builder.cli import cli
from builder.dedup import CLUSTER_COLUMNS, dedup_files, dedup_table, exact_key_text, shingles
from builder.errors import InputError
from builder.settings.dedup import DedupSettings
from tests.support.synthetic import Vocabulary, synthetic_corpus, true_jaccard


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.make(size=4000, seed=7)


@pytest.fixture(scope="module")
def corpus(vocab: Vocabulary) -> pl.DataFrame:
    # Edits of 0.5-8% of words give planted near copies on both sides of Jaccard 0.8.
    return synthetic_corpus(
        600,
        seed=3,
        exact_frac=0.05,
        near_frac=0.1,
        edit_range=(0.005, 0.08),
        vocab=vocab,
        words=(150, 300),
    )


@pytest.fixture(scope="module")
def result(corpus: pl.DataFrame):
    return dedup_table(corpus, DedupSettings(partition_size=250), workers=1)


def _family_of(corpus: pl.DataFrame) -> dict[str, str]:
    return dict(zip(corpus["id"].to_list(), corpus["family"].to_list(), strict=True))


def test_exact_copies_are_all_found(corpus, result):
    fam = _family_of(corpus)
    exact_ids = corpus.filter(pl.col("planted") == "exact")["id"].to_list()
    clustered = dict(
        zip(result.clusters["id"].to_list(), result.clusters["cluster_id"].to_list(), strict=True)
    )
    for i in exact_ids:
        assert i in clustered, f"exact copy {i} not clustered"
        # same cluster as its original
        assert clustered[i] == clustered[fam[i]]


def test_near_copies_found_and_distinct_documents_kept(corpus, result):
    fam = _family_of(corpus)
    near = corpus.filter(pl.col("planted") == "near")
    clustered = dict(
        zip(result.clusters["id"].to_list(), result.clusters["cluster_id"].to_list(), strict=True)
    )
    text = dict(zip(corpus["id"].to_list(), corpus["text"].to_list(), strict=True))
    high = [i for i in near["id"].to_list() if true_jaccard(text[i], text[fam[i]]) >= 0.85]
    low = [i for i in near["id"].to_list() if true_jaccard(text[i], text[fam[i]]) < 0.6]
    assert len(high) >= 15 and len(low) >= 5
    found = sum(1 for i in high if clustered.get(i) == clustered.get(fam[i], "-"))
    assert found / len(high) >= 0.9
    # copies far below the threshold are not merged with their original
    assert not any(clustered.get(i) == clustered.get(fam[i], "-") for i in low)
    # Precision: every removed row belongs to its representative's planted family.
    removed = result.removed
    assert removed.height > 0
    for rid, rep in zip(
        removed["id"].to_list(), removed["representative_id"].to_list(), strict=True
    ):
        assert fam[rid] == fam[rep]
    # Originals that have no copies are all kept.
    families_with_copies = set(corpus.filter(pl.col("planted") != "original")["family"].to_list())
    singles = corpus.filter(
        (pl.col("planted") == "original") & ~pl.col("id").is_in(list(families_with_copies))
    )["id"]
    kept = set(result.kept["id"].to_list())
    assert set(singles.to_list()) <= kept
    assert result.stats.rows_in == corpus.height
    assert result.stats.rows_out == result.kept.height == corpus.height - removed.height


def test_clusters_record_provenance(result):
    c = result.clusters
    assert tuple(c.columns) == CLUSTER_COLUMNS
    assert set(c["kind"].unique().to_list()) <= {"exact", "near"}
    # one representative per cluster, and it is kept
    reps = c.filter(~pl.col("removed"))
    assert reps["cluster_id"].n_unique() == c["cluster_id"].n_unique() == reps.height
    assert (reps["id"] == reps["representative_id"]).all()
    assert set(reps["id"].to_list()) <= set(result.kept["id"].to_list())
    removed = c.filter(pl.col("removed"))
    assert removed.height == result.removed.height
    near = removed.filter(pl.col("kind") == "near")
    assert near.height > 0
    # near members were matched to some member at >= threshold
    assert (near["matched_jaccard"] >= 0.8).all()
    assert near["matched_id"].null_count() == 0
    r = result.removed.row(0, named=True)
    assert r["stage"] == "dedup" and r["representative_id"] in r["detail"]


def test_representative_rule_verified_then_longest_then_smallest_id():
    base = "the quick brown fox jumps over the lazy dog near the river bank today"
    df = pl.DataFrame(
        {
            "id": ["c", "b", "a", "d", "e", "f"],
            "text": [base, base + " ok", base, "other " * 3 + "text here", base.upper(), base],
            "verified": [None, False, None, None, None, True],
        }
    )
    res = dedup_table(df, DedupSettings(shingle_size=3), workers=1)
    c = res.clusters.filter(pl.col("representative_id").is_not_null())
    # f is verified -> representative although shorter than b
    cluster = c.filter(pl.col("id") == "a")
    assert cluster["representative_id"][0] == "f"
    assert set(res.kept["id"].to_list()) == {"f", "d"}
    # without the verified column: the longest (b) wins; among equal lengths the smallest id
    res2 = dedup_table(df.drop("verified"), DedupSettings(shingle_size=3), workers=1)
    assert res2.clusters.filter(pl.col("id") == "a")["representative_id"][0] == "b"
    res3 = dedup_table(
        df.drop("verified").filter(pl.col("id") != "b"), DedupSettings(shingle_size=3), workers=1
    )
    assert res3.clusters.filter(pl.col("id") == "c")["representative_id"][0] == "a"
    kinds = dict(zip(res3.clusters["id"].to_list(), res3.clusters["kind"].to_list(), strict=True))
    assert kinds["e"] == "exact"  # same text up to case


def test_dup_cluster_filled_for_kept_rows_and_ids_generated():
    text = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu"
    df = pl.DataFrame(
        {
            "text": [text, text, "completely different words in this one row here", text + "!"],
            "dup_cluster": [None, None, None, None],
        },
        schema={"text": pl.String, "dup_cluster": pl.String},
    )
    res = dedup_table(df, workers=1)
    kept = res.kept
    assert kept.columns[0] == "id" and kept.height == 2
    # the same text twice gets distinct, stable ids
    res_again = dedup_table(df, workers=1)
    assert res.clusters["id"].to_list() == res_again.clusters["id"].to_list()
    ids = res.clusters["id"].to_list()
    assert len(set(ids)) == len(ids) == 3
    rep = res.clusters.filter(~pl.col("removed"))
    row = kept.filter(pl.col("id") == rep["id"][0])
    assert row["dup_cluster"][0] == rep["cluster_id"][0]
    other = kept.filter(pl.col("id") != rep["id"][0])
    assert other["dup_cluster"][0] is None


def test_deterministic_across_runs_workers_and_partitions(corpus):
    a = dedup_table(corpus, DedupSettings(partition_size=250), workers=1)
    b = dedup_table(corpus, DedupSettings(partition_size=97), workers=2)
    assert a.clusters.equals(b.clusters)
    assert a.kept["id"].to_list() == b.kept["id"].to_list()
    assert a.removed.equals(b.removed)


def test_dedup_files_parquet_directory_and_jsonl(tmp_path: Path, corpus: pl.DataFrame):
    shards = tmp_path / "shards"
    shards.mkdir()
    corpus.slice(0, 300).write_parquet(shards / "part-0.parquet", row_group_size=64)
    corpus.slice(300).write_parquet(shards / "part-1.parquet", row_group_size=1000)
    settings = DedupSettings(partition_size=100)
    res = dedup_files(shards, tmp_path / "out", settings, workers=1, save_signatures=True)
    mem = dedup_table(corpus, settings, workers=1)
    kept = pl.read_parquet(tmp_path / "out" / "kept.parquet")
    assert kept.columns == corpus.columns
    assert kept["id"].to_list() == mem.kept["id"].to_list()
    clusters = pl.read_parquet(tmp_path / "out" / "clusters.parquet")
    assert clusters.equals(mem.clusters)
    sig = np.load(tmp_path / "out" / "signatures.npy")
    assert sig.shape == (corpus.height, 128) and sig.dtype == np.uint32
    assert res.stats.rows_in == corpus.height
    assert not list((tmp_path / "out").glob(".dedup-work-*")), "work dir left behind"

    jsonl = tmp_path / "c.jsonl"
    corpus.write_ndjson(jsonl)
    res_j = dedup_files(jsonl, tmp_path / "outj", settings, workers=1)
    assert res_j.clusters.equals(mem.clusters)


def test_shingle_and_normalisation_definitions():
    assert exact_key_text("  Caf\u00e9\u00a0 IS\n\ngood ") == "café is good"
    assert exact_key_text("\ufb01ne") == "fine"  # NFKC ligature
    assert shingles("Hello, World! Foo-bar baz.", 3) == [
        "hello world foo",
        "world foo bar",
        "foo bar baz",
    ]
    assert shingles("Just two", 5) == ["just two"]
    assert shingles("  ...  ", 5) == []


def test_settings_reject_inconsistent_banding():
    with pytest.raises(ValueError, match="must not exceed num_perm"):
        DedupSettings(num_perm=64, bands=16, rows=8)
    with pytest.raises(ValueError, match="legacy"):
        DedupSettings(scheme="legacy")


# -- bad input ---------------------------------------------------------------------------


def test_missing_text_column_lists_columns(tmp_path: Path):
    p = tmp_path / "x.parquet"
    pl.DataFrame({"id": [1], "body": ["hi"]}).write_parquet(p)
    with pytest.raises(InputError, match=r"no column 'text' \(columns: id, body\)"):
        dedup_files(p, tmp_path / "out")


def test_bad_inputs_give_clear_errors(tmp_path: Path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        dedup_files(empty, tmp_path / "o1")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(InputError) as err:
        dedup_files(latin, tmp_path / "o2")
    assert err.value.problem.line == 2 and "UTF-8" in str(err.value)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(InputError, match="line 2 is not valid JSON"):
        dedup_files(broken, tmp_path / "o3")
    bad_pq = tmp_path / "bad.parquet"
    bad_pq.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match="cannot read Parquet"):
        dedup_files(bad_pq, tmp_path / "o4")
    dup = tmp_path / "dup.parquet"
    pl.DataFrame({"id": ["a", "a"], "text": ["x", "y"]}).write_parquet(dup)
    with pytest.raises(InputError, match="repeated ids"):
        dedup_files(dup, tmp_path / "o5")
    notext = tmp_path / "num.parquet"
    pl.DataFrame({"text": [1, 2]}).write_parquet(notext)
    with pytest.raises(InputError, match="not text"):
        dedup_files(notext, tmp_path / "o6")
    with pytest.raises(InputError, match="not found"):
        dedup_files(tmp_path / "missing.parquet", tmp_path / "o7")


# -- CLI -----------------------------------------------------------------------------------


def test_cli_dedup_writes_outputs_and_prints_node_rates(
    tmp_path: Path, corpus: pl.DataFrame, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)  # no corpus.toml: defaults
    paths = ["math/algebra", "math/calculus", "physics/waves"]
    df = corpus.with_columns(
        pl.Series("taxonomy_path", [paths[i % 3] for i in range(corpus.height)])
    )
    src = tmp_path / "corpus.parquet"
    df.write_parquet(src)
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["dedup", str(src), "-o", str(out), "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert "rows in" in r.output and "per taxonomy node" in r.output
    assert "math/calculus" in r.output
    for name in ("kept", "clusters", "diversity_nodes", "diversity_openers", "diversity_clusters"):
        assert (out / f"{name}.parquet").exists(), name
    summary = json.loads((out / "diversity_summary.json").read_text())
    assert summary["docs"] == corpus.height and summary["dup_rate"] > 0


def test_cli_explain_prints_s_curve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["dedup", "--explain", "--bands", "20", "--rows", "6"])
    assert r.exit_code == 0, r.output
    assert "20 bands x 6 rows" in r.output and "P(candidate)" in r.output
    assert "0.80" in r.output


def test_cli_errors_are_one_line_exit_2(tmp_path: Path):
    import subprocess
    import sys

    p = tmp_path / "x.jsonl"
    p.write_text('{"body": "hi"}\n')
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "builder", "dedup", str(p), "-o", str(tmp_path / "o")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "no column 'text' (columns: body)" in proc.stderr
    assert "Traceback" not in proc.stderr
    bad = CliRunner().invoke(cli, ["dedup", "--explain", "--bands", "40"])
    # A user error (the library's ConfigError, which `corpus` prints as one line, exit 2),
    # not a crash.
    from builder.errors import ConfigError

    assert isinstance(bad.exception, ConfigError), bad.exception
    assert "must not exceed num_perm" in str(bad.exception)


def test_list_valued_taxonomy_path_is_joined(tmp_path: Path) -> None:
    """`corpus dedup` on JSONL whose taxonomy_path is a list of names (a common shape): the
    per-node report joins it with '/' instead of crashing."""
    text = "Forces change the motion of bodies; Newton's second law says F equals m a. " * 6
    rows = [
        {"id": "a", "text": text, "taxonomy_path": ["Physics", "Mechanics"]},
        {"id": "b", "text": text, "taxonomy_path": ["Physics", "Mechanics"]},
        {
            "id": "c",
            "text": "Waves carry energy; light is an electromagnetic wave. " * 8,
            "taxonomy_path": ["Physics", "Optics"],
        },
    ]
    src = tmp_path / "corpus.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["dedup", str(src), "-o", str(out)])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "Physics/Mechanics" in r.output
    assert sorted(pl.read_parquet(out / "kept.parquet")["id"].to_list()) == ["a", "c"]
