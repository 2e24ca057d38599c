"""Decontamination: planted benchmark passages found (also edited), unrelated text kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from builder.cli import cli
from builder.decontam import HIT_COLUMNS, build_index, decontaminate, decontaminate_files
from builder.errors import InputError
from builder.settings.dedup import DecontamSettings
from tests.support.synthetic import Vocabulary, synthetic_corpus


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.make(size=4000, seed=11)


def _passage(vocab: Vocabulary, seed: int, n: int = 60) -> list[str]:
    rng = np.random.default_rng(seed)
    return vocab.spellings[0, vocab.sample(rng, n)].tolist()


def _edit_every(words: list[str], k: int, tag: str) -> list[str]:
    return [f"{tag}{i}" if i % k == k - 1 else w for i, w in enumerate(words)]


@pytest.fixture(scope="module")
def setup(vocab: Vocabulary, tmp_path_factory):
    """A corpus where a few documents embed benchmark passages, verbatim or edited."""
    tmp = tmp_path_factory.mktemp("decontam")
    corpus = synthetic_corpus(120, seed=5, exact_frac=0, near_frac=0, vocab=vocab, words=(150, 250))
    texts = corpus["text"].to_list()
    items = [" ".join(_passage(vocab, 100 + i)) for i in range(6)]
    # doc 3: item 0 verbatim but shouted, with punctuation
    texts[3] = texts[3] + " " + items[0].upper().replace(" ", ", ", 5) + "! " + texts[4][:200]
    # doc 7: item 1 with a word changed every 15 words (13-word runs survive)
    texts[7] = texts[7][:300] + " " + " ".join(_edit_every(items[1].split(), 15, "edx")) + " end"
    # doc 9: item 2 with a word changed every 10 words (no 13-word run survives)
    texts[9] = " ".join(_edit_every(items[2].split(), 10, "edy")) + " " + texts[9]
    corpus = corpus.with_columns(pl.Series("text", texts))
    bench = tmp / "bench.jsonl"
    with bench.open("w") as fh:
        for i, item in enumerate(items[:3]):
            fh.write(json.dumps({"question": item, "answer": str(i)}) + "\n")
    # a Parquet benchmark with one item used verbatim in doc 20, and a text benchmark whose
    # second paragraph is a short (10-word) item that doc 30 quotes.
    texts[20] = texts[20] + " " + items[3]
    short = " ".join(_passage(vocab, 999, 10))
    texts[30] = short + ". " + texts[30]
    corpus = corpus.with_columns(pl.Series("text", texts))
    pq = tmp / "other.parquet"
    pl.DataFrame({"prompt": [items[4], items[3]], "id": [0, 1]}).write_parquet(pq)
    txt = tmp / "notes.txt"
    txt.write_text(f"{items[5]}\n\n{short}\n\ntoo short item\n")
    return corpus, [bench, pq, txt], tmp


def test_planted_passages_found_unrelated_kept(setup):
    corpus, files, _ = setup
    res = decontaminate(corpus, files, DecontamSettings(), workers=1)
    hits = res.hits
    assert tuple(hits.columns) == HIT_COLUMNS
    flagged = set(hits["id"].to_list())
    ids = corpus["id"].to_list()
    assert {ids[3], ids[7], ids[20], ids[30]} <= flagged
    assert ids[9] not in flagged  # edited every 10 words: only the fuzzy check can see it
    assert len(flagged) == 4  # nothing unrelated
    assert res.clean.height == corpus.height - 4
    assert set(res.contaminated["id"].to_list()) == flagged
    assert (res.contaminated["stage"] == "decontam").all()

    by_id = {r["id"]: r for r in hits.iter_rows(named=True)}
    h3 = by_id[ids[3]]
    assert h3["benchmark"].endswith("bench.jsonl") and h3["item"] == 0
    assert len(h3["ngram"].split()) == 13 and h3["ngram"] in " ".join(
        corpus["text"][3].lower().replace(",", "").split()
    )
    h20 = by_id[ids[20]]
    assert h20["benchmark"].endswith("other.parquet") and h20["item"] == 1
    h30 = by_id[ids[30]]
    assert h30["benchmark"].endswith("notes.txt") and h30["item"] == 1
    assert h30["method"] == "short" and h30["ngram_words"] == 10
    assert res.stats.items_too_short == 1  # "too short item"
    assert by_id[ids[7]]["matches"] >= 1


def test_fuzzy_check_catches_lightly_edited_passage(setup):
    corpus, files, _ = setup
    res = decontaminate(corpus, files, DecontamSettings(fuzzy=True), workers=1)
    ids = corpus["id"].to_list()
    flagged = set(res.hits["id"].to_list())
    assert ids[9] in flagged
    assert {ids[3], ids[7], ids[20], ids[30]} <= flagged and len(flagged) == 5
    row = res.hits.filter(pl.col("id") == ids[9]).row(0, named=True)
    assert row["method"] == "fuzzy" and row["fuzzy_score"] >= 85
    exact = res.hits.filter(pl.col("id") == ids[3]).row(0, named=True)
    assert exact["fuzzy_score"] == pytest.approx(100.0)


def test_files_api_matches_in_memory_and_writes_outputs(setup, tmp_path: Path):
    corpus, files, _ = setup
    src = tmp_path / "corpus.jsonl"
    corpus.write_ndjson(src)
    mem = decontaminate(corpus, files, workers=1)
    res = decontaminate_files(
        src, files, tmp_path / "out", DecontamSettings(partition_size=50), workers=1
    )
    assert res.hits.equals(mem.hits)
    clean = pl.read_parquet(tmp_path / "out" / "clean.parquet")
    assert clean["id"].to_list() == mem.clean["id"].to_list()
    rejected = pl.read_parquet(tmp_path / "out" / "rejected.parquet")
    assert set(rejected["id"].to_list()) == set(mem.hits["id"].to_list())
    assert {"stage", "reason", "detail"} <= set(rejected.columns)
    assert pl.read_parquet(tmp_path / "out" / "hits.parquet").equals(mem.hits)


def test_index_counts_items_per_file(setup):
    _, files, _ = setup
    index = build_index(files, DecontamSettings())
    assert index.items_per_file == [3, 2, 3]
    assert index.n_items == 8 and len(index.keys) > 0


def test_benchmark_errors(tmp_path: Path, setup):
    corpus, _, _ = setup
    j = tmp_path / "b.jsonl"
    j.write_text('{"q": "some text"}\n')
    with pytest.raises(InputError, match=r"no text field found \(columns: q\)"):
        decontaminate(corpus, [j])
    with pytest.raises(InputError, match="no column 'nope'"):
        decontaminate(corpus, [j], field="nope")
    t = tmp_path / "b.txt"
    t.write_bytes(b"fine line\nbad \xff line\n")
    with pytest.raises(InputError) as err:
        decontaminate(corpus, [t])
    assert err.value.problem.line == 2
    with pytest.raises(InputError, match="benchmark file not found"):
        decontaminate(corpus, [tmp_path / "missing.jsonl"])
    with pytest.raises(InputError, match="no column 'body'"):
        decontaminate(corpus, [j], text_column="body", field="q")


def test_cli_decontam_several_files_after_against(setup, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no corpus.toml here: nothing configured
    corpus, files, _ = setup
    paths = ["bio/cells", "bio/genes", "chem/acids"]
    src = tmp_path / "c.parquet"
    corpus.with_columns(
        pl.Series("taxonomy_path", [paths[i % 3] for i in range(corpus.height)])
    ).write_parquet(src)
    out = tmp_path / "out"
    args = [
        "decontam",
        str(src),
        "--against",
        str(files[0]),
        str(files[1]),
        str(files[2]),
        "-o",
        str(out),
        "--workers",
        "1",
    ]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "4 contaminated" in r.output and "per taxonomy node" in r.output
    assert "bio/genes" in r.output
    hits = pl.read_parquet(out / "hits.parquet")
    assert hits.height >= 4
    r2 = CliRunner().invoke(cli, ["decontam", str(src), "-o", str(out)])
    # No benchmarks at all: the library's InputError (a user error), not a crash.
    assert isinstance(r2.exception, InputError), r2.exception
    assert "no benchmark files given" in str(r2.exception)


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_compressed_benchmark_and_input_files_are_read_as_they_are(
    tmp_path: Path, codec: str
) -> None:
    """`corpus decontam x.jsonl.gz --against HumanEval.jsonl.gz`: compressed inputs and
    benchmarks (as benchmarks publish them) are read transparently, gzip and zstd."""
    import pyarrow as pa

    item = (
        "Write a function that returns the largest prime factor of a positive integer n, "
        "assuming n is greater than one and is not itself a prime number at all."
    )
    suffix = {"gzip": ".gz", "zstd": ".zst"}[codec]

    def write(path: Path, rows: list[dict]) -> Path:
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        with pa.CompressedOutputStream(str(path), codec) as out:
            out.write(data)
        return path

    bench = write(tmp_path / f"HumanEval.jsonl{suffix}", [{"task_id": "t1", "prompt": item}])
    docs = [
        {"id": "a", "text": "Intro. " + item + " Then more words follow here."},
        {"id": "b", "text": "A clean document about fractions and ratios in daily life."},
    ]
    src = write(tmp_path / f"docs.jsonl{suffix}", docs)
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["decontam", str(src), "--against", str(bench), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "1 contaminated" in r.output
    assert pl.read_parquet(out / "clean.parquet")["id"].to_list() == ["b"]
    # A damaged compressed file: one line naming it, no traceback, no wrong UTF-8 hint.
    broken = tmp_path / f"broken.jsonl{suffix}"
    broken.write_bytes(bench.read_bytes()[:12])
    r = CliRunner().invoke(cli, ["decontam", str(src), "--against", str(broken), "-o", str(out)])
    assert isinstance(r.exception, InputError), r.exception
    assert str(broken) in str(r.exception) and "decompress" in str(r.exception)
    assert "UTF-8" not in str(r.exception)


def test_prefilter_drops_no_hit(setup, monkeypatch: pytest.MonkeyPatch):
    """The top-bits table only skips n-grams that no benchmark key has: the hits are the
    same as with a table that lets every n-gram through to the binary search."""
    from builder.decontam_index import BenchmarkIndex

    corpus, files, _ = setup
    settings = DecontamSettings(fuzzy=True)
    fast = decontaminate(corpus, files, settings, workers=1).hits

    def everything(self: BenchmarkIndex, keys: np.ndarray) -> tuple[np.ndarray, np.uint64]:
        return np.ones(2, dtype=bool), np.uint64(63)  # every top bit: True

    monkeypatch.setattr(BenchmarkIndex, "prefilter", everything)
    slow = decontaminate(corpus, files, settings, workers=1).hits
    assert fast.height >= 5
    assert fast.equals(slow)


def test_uncontaminated_parquet_input_is_copied_as_it_is(setup, tmp_path: Path):
    """With no contaminated row, clean.parquet is the input Parquet file byte for byte
    (no decode and encode of every text) and rejected.parquet is empty with the columns a
    contaminated run gives it; one contaminated row makes it a rewrite without that row."""
    corpus, files, _ = setup
    clean_rows = corpus.filter(~pl.col("id").is_in([corpus["id"][i] for i in (3, 7, 20, 30)]))
    src = tmp_path / "in.parquet"
    clean_rows.write_parquet(src, row_group_size=40)
    res = decontaminate_files(src, files, tmp_path / "out", DecontamSettings(), workers=1)
    assert res.contaminated.height == 0
    assert (tmp_path / "out" / "clean.parquet").read_bytes() == src.read_bytes()
    rejected = pl.read_parquet(tmp_path / "out" / "rejected.parquet")
    assert rejected.height == 0
    assert rejected.columns == [*clean_rows.columns, "stage", "reason", "detail"]

    dirty = tmp_path / "dirty.parquet"
    corpus.write_parquet(dirty, row_group_size=40)
    res = decontaminate_files(dirty, files, tmp_path / "out2", DecontamSettings(), workers=1)
    assert res.contaminated.height > 0
    clean = pl.read_parquet(tmp_path / "out2" / "clean.parquet")
    assert (tmp_path / "out2" / "clean.parquet").read_bytes() != dirty.read_bytes()
    assert clean.height == corpus.height - res.contaminated.height
    assert clean.columns == corpus.columns


def test_file_rates_per_node_read_the_paths_a_batch_at_a_time(tmp_path, monkeypatch) -> None:
    """``decontaminate_files`` counts contamination per node from the paths of a batch at a
    time (never a path per document at once), with the same rates as all rows together."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from builder import decontam
    from builder.dedup import rowids
    from builder.diversity import node_rates

    bench = tmp_path / "bench.jsonl"
    secret = "the quick brown fox jumps over the lazy dog near the quiet river bank today"
    bench.write_text(json.dumps({"question": secret}) + "\n")
    paths = ["math/algebra", "math/calculus", "physics"]
    n = 50
    texts = [f"document {i} about topic {i % 7} " * 3 for i in range(n)]
    texts[3] = f"intro {secret} outro"
    texts[20] = f"{secret} again"
    table = pa.table(
        {
            "id": [f"d{i}" for i in range(n)],
            "taxonomy_path": [paths[i % 3] for i in range(n)],
            "text": texts,
        }
    )
    src = tmp_path / "in.parquet"
    pq.write_table(table, src, row_group_size=16)
    monkeypatch.setattr(rowids, "BATCH_ROWS", 8)
    seen: list[int] = []
    batches = decontam.TableSource.iter_batches

    def counted(self, *args, **kwargs):
        for batch in batches(self, *args, **kwargs):
            if batch.schema.names == ["taxonomy_path"]:
                seen.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(decontam.TableSource, "iter_batches", counted)
    result = decontam.decontaminate_files(src, [bench], tmp_path / "out", workers=1)
    assert sum(seen) == n and max(seen) <= 8
    bad = [i in (3, 20) for i in range(n)]
    want = node_rates(
        pl.DataFrame(
            {"taxonomy_path": table.column("taxonomy_path").to_pylist(), "contaminated": bad}
        ),
        ["contaminated"],
    )
    assert result.nodes is not None and result.nodes.to_dicts() == want.to_dicts()
    assert result.contaminated["id"].sort().to_list() == ["d20", "d3"]
