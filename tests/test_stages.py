"""The stage contract (builder.stages.base), its executor, and the one-stage commands.

Builds run through the real engine against the loopback fake server (tests/support), on the
small project of tests/support/project.py.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from builder.cli import cli, main
from builder.config import load_config
from builder.run.build import run_stages
from builder.stages import STAGES, Stage, build_stages
from builder.stages.base import PartitionStage, RunContext
from builder.stages.generate import journal_files
from builder.util.partitions import list_parts
from tests.support.fake_openai_server import FakeOpenAIServer
from tests.support.project import ids_and_texts, make_project, responder, untimed

SMALL: dict[str, dict[str, Any]] = {
    "walk": {"subtree": ["algorithms", "arithmetic"]},
    "generate": {"documents_per_unit": 2},
    # Tiny partitions: every stage must work a few rows at a time.
    "run": {"partition_rows": 3, "units_per_partition": 2, "flush_rows": 2},
}


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def server() -> Any:
    with FakeOpenAIServer(responder=responder) as srv:
        yield srv


@pytest.fixture(scope="module")
def shared_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(responder=responder) as srv:
        yield srv


@pytest.fixture(scope="module")
def built(shared_server: FakeOpenAIServer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One `corpus build` of the small project through the CLI (its own cache and outputs),
    read by the tests below instead of each building the same corpus again."""
    root = tmp_path_factory.mktemp("built")
    config = make_project(root / "a", shared_server.base_url, SMALL)
    env = {"CORPUS_CACHE_DIR": str(root / "cache"), "CORPUS_OUTPUT_DIR": str(root / "outputs")}
    result = CliRunner().invoke(cli, ["build", "--config", str(config), "--run", "r"], env=env)
    assert result.exit_code == 0, (result.stderr, result.exception)
    return {"config": config, "env": env, "run": root / "outputs" / "r", "stderr": result.stderr}


def run_files(run: Path) -> list[str]:
    """Every file of a run directory (relative), without the lock file."""
    return sorted(
        str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and p.name != ".build.lock"
    )


def test_build_is_the_list_of_stages_in_order() -> None:
    assert STAGES == (
        "syllabi",
        "walk",
        "generate",
        "filter",
        "quality",
        "dedup",
        "semdedup",
        "decontam",
        "assemble",
        "report",
    )
    assert all(isinstance(s, Stage) for s in build_stages())


def test_stages_hold_one_bounded_partition(built: dict) -> None:
    """With partition_rows = 3, no stage ever holds more than 3 rows of a partition, and
    every intermediate partition file has at most 3 rows: memory is bounded by the
    partition size, not the corpus size. (Read from the module's build: the filter stage's
    marker records the most rows it held, ``PartitionStage.max_rows_seen``.)"""
    filt = next(s for s in build_stages() if s.name == "filter")
    assert isinstance(filt, PartitionStage)
    work = built["run"] / "work"
    counters = json.loads((work / "_done" / "filter.json").read_text())["counters"]
    rows_in = counters["rows_in"]
    assert rows_in > 20  # far more rows than one partition
    assert counters["max_rows_held"] == 3
    assert counters["partitions_in"] >= rows_in // 3
    for sink in ("kept", "rejected"):
        parts = list_parts(work / "filter" / sink)
        assert parts and all(pq.ParquetFile(p).metadata.num_rows <= 3 for p in parts)
    units = list_parts(work / "walk")
    assert len(units) >= 3
    assert all(pq.ParquetFile(p).metadata.num_rows <= 2 for p in units)
    # One generation partition per unit partition, nothing left in the journal.
    assert len(list_parts(work / "generate")) == len(units)
    assert not journal_files(work / "generate" / "_journal")
    assert json.loads((built["run"] / "manifest.json").read_text())["counts"]["documents"] > 0


class CountRows(Stage):
    """A stage added from outside the package: counts the kept documents per kind."""

    name = "count"
    runs = 0

    def inputs(self, ctx: RunContext) -> list[Path]:
        return [ctx.paths.stage_dir("filter") / "kept"]

    def outputs(self, ctx: RunContext) -> list[Path]:
        return [self.out_dir(ctx) / "counts.parquet"]

    def fingerprint(self, ctx: RunContext) -> str | None:
        return str(ctx.markers.fingerprint("filter"))

    def run(self, ctx: RunContext) -> dict[str, Any]:
        CountRows.runs += 1
        frame = pl.scan_parquet(list_parts(self.inputs(ctx)[0])).group_by("kind").len()
        out = self.outputs(ctx)[0]
        out.parent.mkdir(parents=True, exist_ok=True)
        frame.collect().sort("kind").write_parquet(out)
        return {"kinds": frame.collect().height}


def test_a_new_stage_runs_once_and_is_skipped_when_up_to_date(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    config = load_config(make_project(tmp_path / "p", server.base_url, SMALL))
    stages = [*build_stages()[:4], CountRows()]
    CountRows.runs = 0
    first = run_stages(config, stages, progress=False)
    assert CountRows.runs == 1 and first.counters["count"]["kinds"] == 2
    marker = json.loads((first.run_dir / "work" / "_done" / "count.json").read_text())
    assert marker["counters"] == {"kinds": 2}
    second = run_stages(config, [*build_stages()[:4], CountRows()], progress=False)
    assert CountRows.runs == 1  # skipped: same fingerprint, outputs exist
    assert second.up_to_date
    (first.run_dir / "work" / "count" / "counts.parquet").unlink()
    run_stages(config, [*build_stages()[:4], CountRows()], progress=False)
    assert CountRows.runs == 2  # an output went missing: run again


def test_one_stage_commands_leave_exactly_the_files_of_the_build(
    shared_server: FakeOpenAIServer,
    built: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The staged run starts from the build's cache, as a second run in one project would.
    shutil.copytree(Path(built["env"]["CORPUS_CACHE_DIR"]), tmp_path / "cache")
    staged = make_project(tmp_path / "b", shared_server.base_url, SMALL)
    run_b = tmp_path / "outputs" / "s"
    code, _out, err = run_cli(capsys, "filter", "--config", str(staged), "--run", "s")
    assert code == 2 and "run the stages before it first" in err  # nothing generated yet
    for argv in (
        ["generate", "--config", str(staged), "--run", "s"],
        ["filter", "--config", str(staged), "--run", str(run_b)],  # a run directory path
        ["quality", "--config", str(staged), "--run", "s"],
        ["dedup", "--config", str(staged), "--run", "s"],
        ["semdedup", "--config", str(staged), "--run", "s"],
        ["decontam", "--config", str(staged), "--run", "s"],
        ["assemble", "--config", str(staged), "--run", "s"],
        ["report", "--config", str(staged), "--run", "s"],
    ):
        code, out, err = run_cli(capsys, *argv)
        assert code == 0, (argv, err)
        assert "Traceback" not in err
    run_a = built["run"]
    assert run_files(run_b) == run_files(run_a)
    assert ids_and_texts(run_b) == ids_and_texts(run_a)
    # Every stage finished in both and counted the same (timings aside).
    for stage in STAGES:
        a = json.loads((run_a / "work" / "_done" / f"{stage}.json").read_text())
        b = json.loads((run_b / "work" / "_done" / f"{stage}.json").read_text())
        drop = ("workers", "cached")  # cache hits differ between any two runs
        assert untimed(a["counters"], drop) == untimed(b["counters"], drop), stage
    # And a build over the staged run has nothing left to do.
    code, out, err = run_cli(capsys, "build", "--config", str(staged), "--run", "s")
    assert code == 0 and "is up to date" in out, err


def test_corpus_walk_prints_the_units_the_build_walked(
    built: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a build generated proposed syllabi (and walked their sessions), `corpus walk
    --config` prints exactly the build's units, in order."""
    config = built["config"]
    for var, value in built["env"].items():
        monkeypatch.setenv(var, value)
    assert "[syllabi] written" in built["stderr"]  # proposed syllabi were written by the build
    run = built["run"]
    built = [
        row["unit_id"]
        for part in list_parts(run / "work" / "walk")
        for row in pq.read_table(part).to_pylist()
    ]
    code, out, err = run_cli(capsys, "walk", "--config", str(config))
    assert code == 0, err
    walked = [json.loads(line)["unit_id"] for line in out.splitlines()]
    assert walked == built
    assert any(
        "#" in u or json.loads(line)["session"]
        for u, line in zip(walked, out.splitlines(), strict=True)
    )


def test_unit_partitions_are_rewritten_only_when_the_walk_changes(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    config = load_config(make_project(tmp_path / "p", server.base_url, SMALL))
    first = run_stages(config, build_stages()[:3], progress=False)
    parts = list_parts(first.run_dir / "work" / "walk")
    stamps = [p.stat().st_mtime_ns for p in parts]
    again = run_stages(config, build_stages()[:3], progress=False)
    assert again.counters["walk"]["rewritten"] == 0
    assert [p.stat().st_mtime_ns for p in parts] == stamps
    assert again.requests_sent == 0


def test_generated_rows_have_the_one_arrow_schema(built: dict) -> None:
    from builder.records import DOCUMENT_SCHEMA, GENERATED_SCHEMA, REJECTED_SCHEMA

    work = built["run"] / "work"
    for directory, schema in (
        (work / "generate", GENERATED_SCHEMA),
        (work / "filter" / "kept", DOCUMENT_SCHEMA),
        (work / "filter" / "rejected", REJECTED_SCHEMA),
    ):
        parts = list_parts(directory)
        assert parts, directory
        for part in parts:
            assert pq.read_schema(part).remove_metadata() == schema, part
    assert pa.types.is_list(GENERATED_SCHEMA.field("concepts").type)


def _decontam_counters(run: Path) -> dict[str, Any]:
    return json.loads((run / "work" / "_done" / "decontam.json").read_text())["counters"]


def _decontam_again(
    built: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], bench: str | None = None
) -> Path:
    """The built run and its project copied under ``tmp_path`` (so the benchmark file has
    another path: another index), ``bench`` as the copy's benchmark item, and its decontam
    stage run again by the one-stage command; returns the copied run."""
    project = tmp_path / "project"
    shutil.copytree(built["config"].parent, project)
    if bench is not None:
        (project / "benchmarks" / "bench.jsonl").write_text(
            json.dumps({"id": "b1", "text": bench}) + "\n", encoding="utf-8"
        )
    run = tmp_path / "run"
    shutil.copytree(built["run"], run)
    config = str(project / built["config"].name)
    code, _out, err = run_cli(capsys, "decontam", "--config", config, "--run", str(run))
    assert code == 0, err
    return run


def test_decontam_takes_the_hits_dedup_scanned_equal_to_its_own_scan(
    built: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The build's dedup tasks scanned every row against decontam's index (the words they
    tokenize for MinHash), and decontam took those hits instead of reading the texts again.
    Its own scan (another index: the benchmark file moved) writes the same files."""
    ours = _decontam_counters(built["run"])
    assert ours["stats"]["scanned_by"] == "dedup" and "tasks" not in ours
    assert ours["stats"]["contaminated"] >= 1  # the section quoting the benchmark item
    scan = pq.read_schema(built["run"] / "work" / "dedup" / "ngram_hits.parquet")
    assert (
        scan.metadata[b"dedup_fingerprint"]
        == json.loads((built["run"] / "work" / "_done" / "dedup.json").read_text())[
            "fingerprint"
        ].encode()
    )
    run = _decontam_again(built, tmp_path, capsys)
    theirs = _decontam_counters(run)
    assert theirs["stats"]["scanned_by"] == "decontam" and theirs["tasks"]["count"] >= 1
    drop = ("scanned_by", "workers")
    assert untimed(theirs["stats"], drop) == untimed(ours["stats"], drop)
    ours_dir, theirs_dir = built["run"] / "work" / "decontam", run / "work" / "decontam"
    assert (theirs_dir / "clean.parquet").read_bytes() == (ours_dir / "clean.parquet").read_bytes()
    # Hits and rejections name the benchmark file, which moved with the project.
    moved = pl.col(pl.String).str.replace_all(
        str(built["config"].parent), str(tmp_path / "project"), literal=True
    )
    for name in ("hits.parquet", "rejected.parquet"):
        expected = pl.read_parquet(ours_dir / name).with_columns(moved)
        assert pl.read_parquet(theirs_dir / name).equals(expected), name
        assert expected.height >= 1, name


def test_decontam_scans_itself_when_dedups_hits_are_for_another_index(
    built: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A benchmark item that no document quotes: dedup's hits (made with the old item) are
    not this index's, so decontam scans, and finds nothing."""
    run = _decontam_again(
        built,
        tmp_path,
        capsys,
        bench="words that no section of this corpus has ever contained, not once, in any line",
    )
    counters = _decontam_counters(run)
    assert counters["stats"]["scanned_by"] == "decontam"
    assert counters["stats"]["contaminated"] == 0 and counters["stats"]["hits"] == 0
    assert pl.read_parquet(run / "work" / "decontam" / "rejected.parquet").height == 0


def test_assembly_takes_the_token_counts_the_filter_stage_made(built: dict) -> None:
    """The filter stage counts every document it keeps; assembly takes those counts (no
    counting of its own), and they are the cl100k counts of the shards' texts."""
    from builder.tokens import count_tokens

    run = built["run"]
    marker = json.loads((run / "work" / "_done" / "assemble.json").read_text())["counters"]
    assert marker["tokens_counted_by"] == "filter" and marker["token_tasks"]["count"] == 0
    kept = pl.concat([pl.read_parquet(p) for p in list_parts(run / "work" / "filter" / "kept")])
    assert kept.height and kept["n_tokens"].null_count() == 0
    docs = pl.concat([pl.read_parquet(p) for p in sorted((run / "documents").glob("*.parquet"))])
    assert docs.height and docs["n_tokens"].to_list() == count_tokens(docs["text"].to_list())
