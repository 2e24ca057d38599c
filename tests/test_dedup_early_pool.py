"""Workers started before the run (``corpus dedup`` starts them first thing): the same
results as without them, used only when they are the number of workers the run resolves
to, and never left running, whatever happens."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from polars.testing import assert_frame_equal

from builder.cli import cli
from builder.cli.dedup import EARLY_POOL_BYTES
from builder.dedup import dedup_files
from builder.dedup.pool import WorkerPool
from builder.errors import ConfigError
from builder.settings.dedup import DedupSettings
from tests.support.synthetic import synthetic_corpus


@pytest.fixture(scope="module")
def big_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A JSONL input above the early-start size (the CLI starts workers for it)."""
    df = synthetic_corpus(1500, seed=4).select("id", "text")
    path = tmp_path_factory.mktemp("early") / "in.jsonl"
    df.write_ndjson(path)
    assert path.stat().st_size >= EARLY_POOL_BYTES
    return path


def _outputs(out: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    kept = pl.read_parquet(out / "kept.parquet").sort("id")
    return kept, pl.read_parquet(out / "clusters.parquet")


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "corpus.toml"
    path.write_text(body)
    return path


def test_cli_with_early_workers_equals_one_worker(big_jsonl: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, "[dedup]\npartition_size = 400\n")  # 4 pieces: the pool is used
    runner = CliRunner()
    one = runner.invoke(
        cli, ["dedup", str(big_jsonl), "-o", str(tmp_path / "one"), "--workers", "1"]
    )
    assert one.exit_code == 0, one.output
    two = runner.invoke(
        cli,
        [
            "dedup",
            str(big_jsonl),
            "-o",
            str(tmp_path / "two"),
            "--config",
            str(cfg),
            "--workers",
            "2",
        ],
    )
    assert two.exit_code == 0, two.output
    assert "2 worker(s)" in two.output
    kept_one, clusters_one = _outputs(tmp_path / "one")
    kept_two, clusters_two = _outputs(tmp_path / "two")
    assert kept_two.height < 1500  # the corpus has planted copies
    assert_frame_equal(kept_one, kept_two)
    assert_frame_equal(clusters_one, clusters_two)
    assert multiprocessing.active_children() == []


def test_cli_config_asking_for_one_worker_replaces_early_workers(
    big_jsonl: Path, tmp_path: Path
) -> None:
    cfg = _config(tmp_path, "[dedup]\nworkers = 1\npartition_size = 400\n")
    r = CliRunner().invoke(
        cli, ["dedup", str(big_jsonl), "-o", str(tmp_path / "out"), "--config", str(cfg)]
    )
    assert r.exit_code == 0, r.output
    assert "1 worker(s)" in r.output
    assert multiprocessing.active_children() == []


def test_cli_error_after_early_start_leaves_no_workers(big_jsonl: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, "[dedup]\nthreshold = 2.0\n")
    r = CliRunner().invoke(
        cli,
        [
            "dedup",
            str(big_jsonl),
            "-o",
            str(tmp_path / "out"),
            "--config",
            str(cfg),
            "--workers",
            "2",
        ],
    )
    # A user error (``corpus`` prints it as one line, exit 2), raised after the early start.
    assert isinstance(r.exception, ConfigError), r.exception
    assert "threshold" in str(r.exception)
    assert not (tmp_path / "out" / "kept.parquet").exists()
    assert multiprocessing.active_children() == []


def test_given_pool_is_used_when_its_size_matches(big_jsonl: Path, tmp_path: Path) -> None:
    settings = DedupSettings(partition_size=400)
    pool = WorkerPool(2)
    used = dedup_files(big_jsonl, tmp_path / "a", settings, workers=2, pool=pool)
    assert pool.closed
    assert pool.submitted >= 4  # the signature tasks of the four pieces went to its workers
    other = WorkerPool(3)
    again = dedup_files(big_jsonl, tmp_path / "b", settings, workers=2, pool=other)
    assert other.closed
    assert other.submitted == 0  # three workers were not asked for: replaced
    assert used.stats.workers == again.stats.workers == 2
    assert_frame_equal(used.clusters, again.clusters)
    assert_frame_equal(*(_outputs(tmp_path / d)[0] for d in ("a", "b")))
    other.close()
    assert multiprocessing.active_children() == []


def test_signature_workers_import_no_pyarrow() -> None:
    """A worker imports the pool and the signature tasks' modules (and unpickles a JSONL
    piece): numpy and Polars only, not pyarrow (~0.15 s of CPU per worker)."""
    code = (
        "import pickle, sys\n"
        "import builder.dedup.pool, builder.dedup.signatures\n"
        "from builder.dedup.piece import Piece\n"
        "pickle.loads(pickle.dumps(Piece(0, 'jsonl', 'x.jsonl', start=0, end=1)))\n"
        "print(sorted(m for m in ('pyarrow', 'pydantic', 'scipy') if m in sys.modules))\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_a_replaced_early_pool_has_exited_when_dedup_returns(tmp_path: Path) -> None:
    """Early workers the run does not use are waited for before ``dedup_files`` returns,
    even when the run finishes before they have started."""
    path = tmp_path / "in.parquet"
    synthetic_corpus(60, seed=5).select("id", "text").write_parquet(path)
    early = WorkerPool(2)
    dedup_files(path, tmp_path / "out", DedupSettings(workers=1), pool=early)
    assert early.closed
    assert multiprocessing.active_children() == []
