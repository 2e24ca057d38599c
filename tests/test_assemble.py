"""builder.assemble: shards, rejected.parquet and manifest.json in a run directory."""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from builder.assemble import (
    DOCUMENT_TYPES,
    ROW_OVERHEAD_BYTES,
    assemble,
    read_manifest,
    scan_corpus,
    verify_run,
)
from builder.errors import InputError
from builder.records import DOCUMENT_COLUMNS, REJECTION_COLUMNS
from builder.tokens import count_tokens
from tests.support.assemble_data import make_config, make_rejected, make_rows

ROOT = Path(__file__).resolve().parent.parent


def config(**output):
    return make_config({f"output.{k}": v for k, v in output.items()})


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def corpus_files(run: Path) -> dict[str, bytes]:
    """Every corpus file's bytes, keyed by relative path (manifest excluded)."""
    files = sorted((run / "documents").glob("part-*.parquet")) + [run / "rejected.parquet"]
    return {str(p.relative_to(run)): p.read_bytes() for p in files}


def manifest_without_time(run: Path) -> dict:
    m = read_manifest(run)
    m.pop("created_at")
    return m


@pytest.fixture(scope="module")
def rows():
    return make_rows(400, seed=3)


@pytest.fixture(scope="module")
def rejected(rows):
    return make_rejected(rows, 40)


def test_shards_schema_order_and_counts(tmp_path: Path, rows, rejected) -> None:
    run = tmp_path / "run"
    res = assemble(rows, rejected, run, config=config(shard_max_rows=150), extra_manifest={"x": 1})

    assert [s.path for s in res.shards] == [f"documents/part-{i:05d}.parquet" for i in range(3)]
    assert [s.rows for s in res.shards] == [150, 150, 100]
    df = pl.read_parquet(run / "documents" / "*.parquet")
    assert df.columns == [*DOCUMENT_COLUMNS, "structured"]
    arrow = pq.read_schema(run / "documents" / "part-00000.parquet")
    for name, typ in DOCUMENT_TYPES.items():
        assert arrow.field(name).type == typ, name
    # sorted by id across shards, every row kept once
    assert df["id"].to_list() == sorted(r["id"] for r in rows)
    # n_tokens recounted in cl100k (the input said 0)
    by_id = {r["id"]: r["text"] for r in rows}
    assert df["n_tokens"].to_list() == count_tokens([by_id[i] for i in df["id"]])
    # nested values became JSON strings, timestamps became UTC datetimes
    ex = df.filter(pl.col("kind") == "exercise")["structured"].drop_nulls()
    assert json.loads(ex[0]).keys() == {"answer", "question"}
    assert str(df.schema["created_at"]) == "Datetime(time_unit='us', time_zone='UTC')"

    m = read_manifest(run)
    assert m["x"] == 1
    assert m["counts"]["documents"] == 400 == res.documents
    assert m["counts"]["tokens"] == int(df["n_tokens"].sum()) == res.tokens
    per_disc = df.group_by("discipline").agg(pl.len(), pl.col("n_tokens").sum())
    for d, n, t in per_disc.iter_rows():
        assert m["counts"]["by_discipline"][d] == {"documents": n, "tokens": t}
    assert m["counts"]["rejected"]["total"] == 40
    stages = pl.DataFrame(rejected).group_by("stage").len()
    assert m["counts"]["rejected"]["by_stage"] == dict(stages.iter_rows())
    assert m["config_hash"] == config(shard_max_rows=150).config_hash()
    assert m["config"]["output"]["shard_max_rows"] == 150
    assert m["packages"]["polars"] == pl.__version__
    assert m["tokenizer"]["encoding"] == "cl100k_base"
    assert "session" not in m["columns_filled_with_null"]


def test_manifest_sha256_match_files(tmp_path: Path, rows, rejected) -> None:
    run = tmp_path / "run"
    assemble(rows, rejected, run, config=config(shard_max_rows=120))
    m = json.loads((run / "manifest.json").read_text())
    for entry in [*m["shards"], m["rejected"]]:
        path = run / entry["path"]
        assert sha(path) == entry["sha256"]
        assert path.stat().st_size == entry["bytes"]
        assert pq.ParquetFile(path).metadata.num_rows == entry["rows"]
    assert verify_run(run) == []
    # A changed byte, a missing shard and an unlisted shard are all reported.
    shard = run / m["shards"][0]["path"]
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    (run / m["shards"][1]["path"]).unlink()
    (run / "documents" / "part-09999.parquet").write_bytes(b"x")
    problems = verify_run(run)
    assert any("part-00000" in p and "sha256" in p for p in problems)
    assert any("part-00001" in p and "missing" in p for p in problems)
    assert any("part-09999" in p and "not listed" in p for p in problems)


def test_rejected_parquet(tmp_path: Path, rows, rejected) -> None:
    run = tmp_path / "run"
    assemble(rows, rejected, run, config=config())
    rej = pl.read_parquet(run / "rejected.parquet")
    assert rej.columns[:4] == list(REJECTION_COLUMNS)
    # provenance columns kept in document-column order
    assert rej.columns[4:] == ["text", "discipline", "subject", "topic", "taxonomy_path", "model"]
    assert rej.height == 40
    assert rej["id"].to_list() == sorted(r["id"] for r in rejected)


def test_shard_bounds_rows_and_bytes(tmp_path: Path, rows) -> None:
    run = tmp_path / "run"
    max_mb = 0.05
    res = assemble(rows, None, run, config=config(shard_max_rows=70, shard_max_mb=max_mb))
    limit = int(max_mb * 1024 * 1024)
    last_id = ""
    total = 0
    assert len(res.shards) > 400 // 70
    for info in res.shards:
        df = pl.read_parquet(run / info.path)
        assert 1 <= df.height <= 70
        size = int(df["text"].str.len_bytes().sum()) + ROW_OVERHEAD_BYTES * df.height
        assert size <= limit or df.height == 1
        assert df["id"][0] > last_id  # shards are contiguous ranges of the sorted ids
        last_id = df["id"][-1]
        total += df.height
        assert path_size_ok(run / info.path, limit)
    assert total == 400


def path_size_ok(path: Path, limit: int) -> bool:
    return path.stat().st_size <= limit


def test_oversized_row_gets_its_own_shard(tmp_path: Path) -> None:
    rows = [{"id": f"{i:03d}", "text": "x" * (3000 if i == 2 else 10)} for i in range(5)]
    res = assemble(rows, None, tmp_path, config=config(shard_max_mb=0.002))  # ~2 KB
    sizes = [s.rows for s in res.shards]
    assert sum(sizes) == 5
    big = [s for s in res.shards if s.first_id == "002"]
    assert big and big[0].rows == 1


def test_loads_with_polars_and_datasets(tmp_path: Path, rows, monkeypatch) -> None:
    run = tmp_path / "run"
    assemble(rows, None, run, config=config(shard_max_rows=100))
    glob = str(run / "documents" / "*.parquet")
    assert pl.read_parquet(glob).height == 400
    assert scan_corpus(run).select(pl.len()).collect().item() == 400

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    ds = datasets.load_dataset(
        "parquet", data_files=glob, split="train", cache_dir=str(tmp_path / "hf-cache")
    )
    assert ds.num_rows == 400
    assert ds.column_names[: len(DOCUMENT_COLUMNS)] == list(DOCUMENT_COLUMNS)
    first = ds[0]
    assert isinstance(first["concepts"], list) and isinstance(first["n_tokens"], int)
    assert first["id"] == min(r["id"] for r in rows)


def test_identical_inputs_give_identical_bytes(tmp_path: Path, rows, rejected) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assemble(rows, rejected, a, config=config(shard_max_rows=90))
    shuffled = list(rows)
    random.Random(9).shuffle(shuffled)
    # Same rows, other order, other container types: same bytes.
    assemble(
        pl.DataFrame(shuffled).lazy(),
        list(reversed(rejected)),
        b,
        config=config(shard_max_rows=90),
    )
    assert corpus_files(a) == corpus_files(b)
    assert manifest_without_time(a) == manifest_without_time(b)


def test_reassembly_removes_stale_shards(tmp_path: Path, rows) -> None:
    run = tmp_path / "run"
    assemble(rows, None, run, config=config(shard_max_rows=50))
    assert len(list((run / "documents").glob("part-*.parquet"))) == 8
    assemble(rows[:120], None, run, config=config(shard_max_rows=50))
    assert sorted(p.name for p in (run / "documents").glob("*")) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert verify_run(run) == []
    assert not (run / ".assemble").exists()


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {root!r})
    import builder.assemble as A
    import builder.assemble_shards as S
    from builder.config import CorpusConfig

    mode, after = sys.argv[1], int(sys.argv[2])
    calls = []

    def die_after(path):
        calls.append(path)
        if len(calls) > after:
            if mode == "mid-file":  # leave a half-written temp file behind, then die
                tmp = path.with_name("." + path.name + ".x1y2z3.tmp")  # as util.files names them
                tmp.write_bytes(b"PAR1" + b"\\0" * 1000)
            os.kill(os.getpid(), signal.SIGKILL)

    real_parquet, real_shard = A._write_parquet, S._write_shard

    def dying_write(table, path, **kw):  # rejected.parquet
        die_after(path)
        real_parquet(table, path, **kw)

    def dying_shard(groups, run, index, *args, **kw):  # each shard, row group by row group
        die_after(run / A.DOCUMENTS_DIR / f"part-{{index:05d}}.parquet")
        return real_shard(groups, run, index, *args, **kw)

    A._write_parquet, S._write_shard = dying_write, dying_shard
    cfg = CorpusConfig.model_validate({{"output": {{"shard_max_rows": 60}}}})
    A.assemble(sys.argv[3], sys.argv[4], sys.argv[5], config=cfg)
    print("finished without being killed")
    """
)


@pytest.mark.parametrize(
    ("mode", "after"), [("between-shards", 2), ("mid-file", 4), ("between-shards", 7)]
)
def test_kill_9_then_rerun_gives_identical_corpus(
    tmp_path: Path, rows, rejected, mode: str, after: int
) -> None:
    docs_in = tmp_path / "in" / "documents.parquet"
    rej_in = tmp_path / "in" / "rejected.jsonl"
    docs_in.parent.mkdir()
    pl.DataFrame(rows).write_parquet(docs_in)
    pl.DataFrame(rejected).write_ndjson(rej_in)
    clean = tmp_path / "clean"
    assemble(docs_in, rej_in, clean, config=config(shard_max_rows=60))

    killed = tmp_path / "killed"
    # An older complete run in the same directory must not survive as "complete".
    assemble(rows[:10], None, killed, config=config(shard_max_rows=60))
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT.format(root=str(ROOT)))
    proc = subprocess.run(
        [sys.executable, str(script), mode, str(after), str(docs_in), str(rej_in), str(killed)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    if after < 7:
        # Killed while the 7 shards were written (into the scratch folder): the older run
        # is untouched and still complete.
        assert verify_run(killed) == []
        assert read_manifest(killed)["counts"]["documents"] == 10
    else:
        # Killed at rejected.parquet, once the new shards had replaced the older run's:
        # incomplete runs have no manifest.
        assert not (killed / "manifest.json").exists()
        with pytest.raises(InputError, match="did not finish"):
            read_manifest(killed)
    leftovers = [p.name for p in killed.rglob(".*") if p.is_file()]
    if mode == "mid-file":
        assert any(name.endswith(".tmp") for name in leftovers)

    assemble(docs_in, rej_in, killed, config=config(shard_max_rows=60))
    assert corpus_files(killed) == corpus_files(clean)
    assert manifest_without_time(killed) == manifest_without_time(clean)
    assert [p for p in killed.rglob("*") if p.name.endswith(".tmp")] == []
    assert not (killed / ".assemble").exists()
    assert verify_run(killed) == []


def test_inputs_from_parquet_jsonl_and_directories(tmp_path: Path, rows, rejected) -> None:
    d = tmp_path / "parts"
    d.mkdir()
    pl.DataFrame(rows[:200]).write_parquet(d / "a.parquet")
    pl.DataFrame(rows[200:]).write_parquet(d / "b.parquet")
    rej_dir = tmp_path / "rej"
    rej_dir.mkdir()
    pl.DataFrame(rejected[:10]).write_ndjson(rej_dir / "filter.jsonl")
    pl.DataFrame(rejected[10:]).write_ndjson(rej_dir / "dedup.jsonl")
    a = assemble(d, rej_dir, tmp_path / "a", config=config())
    b = assemble(
        [d / "a.parquet", d / "b.parquet"],
        [rej_dir / "filter.jsonl", rej_dir / "dedup.jsonl"],
        tmp_path / "b",
        config=config(),
    )
    assert a.documents == b.documents == 400
    assert a.rejected == b.rejected == 40
    assert corpus_files(tmp_path / "a") == corpus_files(tmp_path / "b")


def test_empty_corpus_still_loads(tmp_path: Path) -> None:
    res = assemble([], [], tmp_path / "run", config=config())
    assert res.documents == 0 and len(res.shards) == 1
    df = pl.read_parquet(tmp_path / "run" / "documents" / "*.parquet")
    assert df.height == 0 and df.columns == list(DOCUMENT_COLUMNS)
    assert read_manifest(tmp_path / "run")["counts"]["rejected"]["total"] == 0


def test_timestamps_normalised_to_utc(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "text": "one", "created_at": "2025-01-01T10:00:00+02:00"},
        {"id": "b", "text": "two", "created_at": "2025-01-01T08:00:00Z"},
        {"id": "c", "text": "three", "created_at": None},
    ]
    assemble(rows, None, tmp_path, config=config())
    got = pl.read_parquet(tmp_path / "documents" / "*.parquet")["created_at"].to_list()
    assert got[0] == got[1] and got[0].isoformat() == "2025-01-01T08:00:00+00:00"
    assert got[2] is None


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"text": "no id"}], "no 'id' column"),
        ([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}], "duplicate document id.*a"),
        (
            [{"id": i, "text": "t"} for i in ["c", "a", "b", "c", "d", "a", "c"]],
            r"^duplicate document id\(s\): a, c \(",
        ),
        ([{"id": None, "text": "x"}, {"id": "b", "text": "y"}], r"^1 document row\(s\) have no id"),
        ([{"id": "a", "text": None}, {"id": "b", "text": "ok"}], "without text: a"),
        ([{"id": "a", "text": "x", "seed": "seven"}], "column 'seed' has type String"),
        ([{"id": "a", "text": "x", "verified": "yes"}], "column 'verified'"),
        ([{"id": "a", "text": "x", "created_at": "not a date"}], "cannot convert"),
    ],
)
def test_bad_input_is_an_input_error(tmp_path: Path, rows, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        assemble(rows, None, tmp_path / "run", config=config())
    assert info.value.problem.hint
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_ids_whose_hashes_meet_are_compared_as_ids(tmp_path: Path, monkeypatch) -> None:
    """The id check compares a hash per document; where hashes meet (here: every one, as if
    all collided) the ids themselves decide, so distinct ids pass and a repeat is named."""
    from builder.dedup import rowids

    monkeypatch.setattr(rowids, "id_key", lambda column: pl.lit(42, dtype=pl.UInt64))
    rows = [{"id": i, "text": f"text {i}"} for i in ["b", "a", "c"]]
    result = assemble(rows, None, tmp_path / "ok", config=config())
    assert result.documents == 3
    with pytest.raises(InputError, match=r"^duplicate document id\(s\): b \("):
        assemble([*rows, {"id": "b", "text": "again"}], None, tmp_path / "bad", config=config())


def test_bad_rejected_and_paths(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="rejected rows have no 'reason'"):
        assemble(
            [{"id": "a", "text": "x"}], [{"id": "b", "stage": "filter"}], tmp_path, config=config()
        )
    with pytest.raises(InputError, match="not found"):
        assemble(tmp_path / "missing.parquet", None, tmp_path, config=config())
    bad = tmp_path / "rows.csv"
    bad.write_text("id,text\n")
    with pytest.raises(InputError, match="'.csv'"):
        assemble(bad, None, tmp_path, config=config())


def test_extra_manifest_cannot_replace_assembly_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shards"):
        assemble([], None, tmp_path, config=config(), extra_manifest={"shards": []})


def test_bad_input_leaves_the_previous_corpus_intact(tmp_path: Path, rows) -> None:
    run = tmp_path / "run"
    assemble(rows[:50], None, run, config=config())
    before = corpus_files(run)
    with pytest.raises(InputError, match="cannot convert"):
        assemble([{"id": "a", "text": "x", "created_at": "yesterday"}], None, run, config=config())
    assert corpus_files(run) == before
    assert verify_run(run) == []
    assert not (run / ".assemble").exists()


def test_a_second_assembly_of_the_same_run_is_refused(tmp_path: Path) -> None:
    import fcntl

    from builder.errors import BuilderError

    run = tmp_path / "run"
    (run / ".assemble").mkdir(parents=True)
    with open(run / ".assemble" / "lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # another process is assembling
        with pytest.raises(BuilderError, match="another process is assembling"):
            assemble([{"id": "a", "text": "x"}], None, run, config=config())
    assemble([{"id": "a", "text": "x"}], None, run, config=config())
    assert verify_run(run) == []


def test_external_sort_by_id_in_small_buckets(tmp_path: Path) -> None:
    """sort_by_id with a bucket size far below the row count gives the same order as an
    in-memory sort, for skewed, non-hex ids."""
    from builder.assemble import sort_by_id

    rng = random.Random(5)
    ids = [f"{rng.choice('aab')}{rng.randrange(10**6):06d}-{i}" for i in range(500)]
    frame = pl.DataFrame({"id": ids, "text": [f"t{i}" for i in range(500)]})
    dest = tmp_path / "sorted.parquet"
    n = sort_by_id(frame.lazy(), dest, tmp_path, max_rows=7)
    out = pl.read_parquet(dest)
    assert n == 500
    assert out["id"].to_list() == sorted(ids)
    assert out.sort("id").equals(frame.sort("id"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sorted.parquet"]  # no bucket left
