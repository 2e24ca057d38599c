"""``--executor ray``: the build's partitioned stages as Ray tasks on a real 2-node cluster.

One Ray cluster for the module (``ray.cluster_utils.Cluster``: a head and a worker node, one
CPU each, on the loopback address 127.0.0.2; never 127.0.0.1, which Ray replaces with the
external address). One project is generated once (locally, through the real engine against
the loopback fake server); every build below starts from a copy of it (project, generated
partitions and LLM cache, all relative paths), so builds can be compared byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from builder.cli import main
from builder.config import load_config
from builder.run.build import run_stages
from builder.stages import build_stages
from tests.support.fake_openai_server import FakeOpenAIServer
from tests.support.project import ROOT, judging_responder, make_project, responder, untimed

NODE_IP = "127.0.0.2"
MB = 2**20
PROJECT: dict[str, dict[str, Any]] = {
    "walk": {"subtree": ["algorithms", "arithmetic"]},
    "generate": {"documents_per_unit": 2},
    # One unit per generated partition, 3 rows a batch: many small tasks to spread. The
    # local builds run in one process (no pool to start; the pool's own byte-for-byte tests
    # are in test_local_pool.py and test_stage_tasks.py).
    "run": {"partition_rows": 3, "units_per_partition": 1, "flush_rows": 2, "workers": 1},
    "llm": {"cache_dir": ".corpus-cache"},
    "output": {"dir": "outputs", "run": "r", "shard_max_rows": 5},
}
# Under `make test` (pytest-xdist, --dist loadgroup) every test using the module's cluster runs
# on one worker (tests/support/xdist_groups.py): one Ray cluster at a time, and the module-scoped
# cluster and builds are made once. The test without a cluster runs wherever there is room.
_ENV = (
    "CORPUS_CACHE_DIR", "CORPUS_OUTPUT_DIR", "CORPUS_EXECUTOR", "CORPUS_RAY_ADDRESS",
    "CORPUS_WORKERS",
)  # fmt: skip


def _cli(*argv: str) -> int:
    try:
        main(list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A head and one worker node on 127.0.0.2 (1 CPU, 200 MB object store each)."""
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", tmp)
        mp.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        node_args = {
            "num_cpus": 1,
            "node_ip_address": NODE_IP,
            "object_store_memory": 200 * MB,
        }
        c = Cluster(
            initialize_head=True,
            head_node_args={**node_args, "include_dashboard": False},
        )
        c.add_node(**node_args)
        c.wait_for_nodes()
        try:
            yield c
        finally:
            import ray

            ray.shutdown()
            c.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAIServer]:
    """The loopback fake endpoint, for the whole module (filters ask it for second samples)."""
    with FakeOpenAIServer(responder=responder) as srv:
        yield srv


@pytest.fixture(scope="module")
def generated(server: FakeOpenAIServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose run ``r`` is generated (syllabi, walk, generate done; nothing else)."""
    root = tmp_path_factory.mktemp("generated") / "p"
    with pytest.MonkeyPatch.context() as mp:
        for var in _ENV:
            mp.delenv(var, raising=False)
        config = make_project(root, server.base_url, PROJECT, run="r")
        assert _cli("generate", "--config", str(config)) == 0
    return root


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where every build runs: one fixed path (records such as decontam's name the absolute
    benchmark path, so builds compared byte for byte must run at the same place)."""
    return tmp_path_factory.mktemp("place") / "p"


def _copy(generated: Path, dest: Path) -> Path:
    """A fresh copy of the generated project at ``dest``; returns its config."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(generated, dest)
    return dest / "corpus.toml"


def _keep(run: Path, dest: Path) -> Path:
    """Move a finished run out of the shared place."""
    shutil.move(run, dest)
    return dest


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Paths from the projects' configs (relative, so copies compare equal), not from env."""
    for var in _ENV:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def local_run(generated: Path, place: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the copy built with the local executor."""
    config = _copy(generated, place)
    with pytest.MonkeyPatch.context() as mp:
        for var in _ENV:
            mp.delenv(var, raising=False)
        assert _cli("build", "--config", str(config), "--no-progress", "--executor", "local") == 0
    return _keep(place / "outputs" / "r", tmp_path_factory.mktemp("local") / "r")


def _corpus_files(run: Path) -> dict[str, bytes]:
    """Shards, rejected.parquet, the filter stage's partitions and decontam's outputs, by
    relative path."""
    files = [*run.glob("documents/*.parquet"), run / "rejected.parquet"]
    files += [p for p in (run / "work" / "filter").rglob("part-*.parquet")]
    files += sorted((run / "work" / "decontam").glob("*.parquet"))
    return {str(p.relative_to(run)): p.read_bytes() for p in files}


def _assert_same_corpus(
    run: Path, reference: Path, *, same_history: bool = True, retried: bool = False
) -> None:
    """Same shards, rejections and filter partitions, byte for byte; the same manifest but
    for its timings (and for ``stats``, the ledger of the builds, when one was resumed; and
    the count of answers from the LLM cache when a retried task asked again)."""
    ours, theirs = _corpus_files(run), _corpus_files(reference)
    assert sorted(ours) == sorted(theirs)
    assert len([k for k in ours if k.startswith("documents/")]) >= 2
    assert "work/decontam/hits.parquet" in ours
    for name in theirs:
        assert ours[name] == theirs[name], name
    manifest = json.loads((run / "manifest.json").read_text())
    expected = json.loads((reference / "manifest.json").read_text())
    if not same_history:
        assert manifest.pop("stats")["builds"] == expected.pop("stats")["builds"] + 1
    drop = ("created_at", "requests_cached") if retried else ("created_at",)
    assert untimed(manifest, drop) == untimed(expected, drop)
    assert "ray" not in json.dumps(manifest["config"])  # the executor is not in the manifest


def _counters(run: Path, stage: str = "filter") -> dict[str, Any]:
    return json.loads((run / "work" / "_done" / f"{stage}.json").read_text())["counters"]


def _filter_counters(run: Path) -> dict[str, Any]:
    return _counters(run, "filter")


def _scans_and_counts(run: Path) -> tuple[str, str]:
    """Who scanned for contamination and who counted the tokens (their markers): dedup's
    signature tasks (Ray tasks on Ray) scan, as they tokenize the texts anyway, and the
    filter stage's tasks count, as they read them anyway."""
    return (
        _counters(run, "decontam")["stats"]["scanned_by"],
        _counters(run, "assemble")["tokens_counted_by"],
    )


def test_a_build_on_ray_equals_the_local_build_byte_for_byte(
    cluster: Any, local_run: Path, generated: Path, place: Path, clean_env: None
) -> None:
    config = _copy(generated, place)
    code = _cli(
        "build", "--config", str(config), "--no-progress",
        "--executor", "ray", "--ray-address", cluster.address,
    )  # fmt: skip
    assert code == 0
    run = config.parent / "outputs" / "r"
    _assert_same_corpus(run, local_run)
    counters = _filter_counters(run)
    assert counters["partitions_run"] >= 6 and counters["partitions_skipped"] == 0
    assert counters["verified"] > 0  # exercises were verified on the workers
    # Decontam removed documents quoting the benchmark (so its hits and rejections, compared
    # above, are not empty), the same ones as locally.
    decontam = _counters(run, "decontam")["stats"]
    assert decontam["contaminated"] >= 1 and decontam["rows_out"] < decontam["rows_in"]
    assert decontam == {**_counters(local_run, "decontam")["stats"], "seconds": decontam["seconds"]}
    rejected = pl.read_parquet(run / "rejected.parquet")
    assert rejected.filter(pl.col("stage") == "decontam").height == decontam["contaminated"]
    # The scan ran in dedup's tasks and the counts in filter's, on Ray as locally.
    assert _scans_and_counts(run) == _scans_and_counts(local_run) == ("dedup", "filter")
    # A second build (local now) finds everything up to date: same fingerprints.
    code = _cli("build", "--config", str(config), "--no-progress", "--executor", "local")
    assert code == 0
    assert _filter_counters(run) == counters


def test_a_killed_driver_resumes_without_redoing_finished_partitions(
    cluster: Any, local_run: Path, generated: Path, place: Path, clean_env: None
) -> None:
    config = _copy(generated, place)
    run = config.parent / "outputs" / "r"
    argv = [sys.executable, "-m", "builder", "build", "--config", str(config), "--no-progress"]
    argv += ["--executor", "ray", "--ray-address", cluster.address]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CORPUS_FAULT": "partition.done:3"}
    killed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    records = sorted((run / "work" / "filter" / "_partitions").glob("*.json"))
    assert len(records) == 3  # the driver died right after recording the third partition
    assert not (run / "work" / "_done" / "filter.json").exists()
    finished = {
        run / "work" / "filter" / sink / name: None
        for r in records
        for sink, names in json.loads(r.read_text())["outputs"].items()
        for name in names
    }
    stamps = {p: p.stat().st_mtime_ns for p in finished}
    env.pop("CORPUS_FAULT")
    resumed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    counters = _filter_counters(run)
    assert counters["partitions_skipped"] == 3
    tasks = len(list((run / "work" / "filter" / "_partitions").glob("*.json")))
    assert tasks >= 6 and counters["partitions_run"] == tasks - 3
    assert {p: p.stat().st_mtime_ns for p in finished} == stamps  # not written again
    _assert_same_corpus(run, local_run, same_history=False)


def test_a_worker_node_removed_mid_stage_still_yields_the_same_corpus(
    cluster: Any,
    local_run: Path,
    generated: Path,
    place: Path,
    clean_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import ray

    config = load_config(_copy(generated, place))
    config = config.model_copy(
        update={"run": config.run.model_copy(update={"ray_address": cluster.address})}
    )
    # The driver joins the cluster first (the build uses this connection), so the node to
    # remove can be one the driver is not attached to.
    ray.init(address=cluster.address, _node_ip_address=NODE_IP, log_to_driver=False)
    driver_node = ray.get_runtime_context().get_node_id()
    worker = next(n for n in cluster.list_all_nodes() if n.node_id != driver_node and not n.head)
    removed: list[str] = []

    def log(line: str) -> None:
        # Remove the worker once two partitions of the filter stage are done (tasks are
        # still running on it: two in flight per CPU).
        if line.startswith("[filter] partition 2/") and not removed:
            alive = [n for n in ray.nodes() if n["Alive"]]
            cluster.remove_node(worker)
            removed.append(f"{len(alive)} nodes")

    try:
        summary = run_stages(config, build_stages(), progress=False, log=log, executor="ray")
    finally:
        ray.shutdown()
    assert removed == ["2 nodes"]
    # Ray's "task failed, will be retried" messages go to stderr: stdout is the command's.
    assert capsys.readouterr().out == ""
    run = summary.run_dir
    _assert_same_corpus(run, local_run, retried=True)
    counters = _filter_counters(run)
    assert counters["partitions_run"] >= 6
    cluster.add_node(num_cpus=1, node_ip_address=NODE_IP, object_store_memory=200 * MB)


def test_a_judge_on_its_own_endpoint_is_reached_through_the_driver(
    cluster: Any, generated: Path, place: Path, clean_env: None
) -> None:
    """The quality stage's judge with its own endpoint, on Ray: the workers' judge requests
    are answered by the driver's judge engine (one window, cache and meter for the cluster),
    so they reach the judge server and count in the build's ledger."""
    config = _copy(generated, place)
    with FakeOpenAIServer(responder=judging_responder) as judge_srv:
        text = config.read_text(encoding="utf-8") + (
            f'\n[judge]\nenabled = true\nbase_url = "{judge_srv.base_url}"\nmodel = "judge-model"\n'
        )
        config.write_text(text, encoding="utf-8")
        code = _cli(
            "build", "--config", str(config), "--no-progress",
            "--executor", "ray", "--ray-address", cluster.address,
        )  # fmt: skip
        assert code == 0
        # the judge's requests, without the repair retries (a second call of the same one)
        asked = sum(
            1 for b in judge_srv.requests if [m["role"] for m in b["messages"]].count("user") == 1
        )
    run = config.parent / "outputs" / "r"
    docs = pl.read_parquet(run / "documents" / "*.parquet")
    assert set(docs["judge_model"].drop_nulls()) == {"judge-model"}
    counters = json.loads((run / "work" / "_done" / "quality.json").read_text())["counters"]
    # every document the quality stage saw was judged once, by the judge's server
    assert asked == counters["stats"]["judge"]["documents"] >= docs.height > 0
    assert counters["partitions_run"] >= 2  # several Ray tasks asked the judge
    sent = json.loads((run / "work" / "ledger.json").read_text())["requests_sent"]
    assert sent >= asked  # the build's meter counted the judge's requests too


def test_the_local_executor_never_imports_ray(tmp_path: Path) -> None:
    """With the local executor (the default) neither ``corpus build --help`` nor a build
    imports Ray: a cost only for those who choose it. (A project of its own, built from
    scratch: no cluster, so this test need not wait for the cluster's worker.)"""
    with FakeOpenAIServer(responder=responder) as srv:
        config = make_project(tmp_path / "p", srv.base_url, PROJECT, run="r")
        _assert_never_imports_ray(config)


def _assert_never_imports_ray(config: Path) -> None:
    script = (
        "import sys\n"
        "from builder.cli import main\n"
        "try:\n"
        f"    main(['build', '--config', {str(config)!r}, '--no-progress'])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in _ENV}
    env["PYTHONPATH"] = str(ROOT)
    for argv in (["--help"], []):
        code = script if not argv else script.replace("'--no-progress'", "'--help'")
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().splitlines()[-1] == "[]"
    assert (config.parent / "outputs" / "r" / "manifest.json").exists()  # it did build


def test_corpus_dedup_on_ray_equals_local_byte_for_byte(
    cluster: Any, tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`corpus dedup --executor ray`: the signature tasks and the band grouping's shuffle
    (one task per bucket, 4 buckets) run as Ray tasks on the 2-node cluster; every output
    file equals the local executor's byte for byte."""
    from tests.support.synthetic import Vocabulary, synthetic_corpus

    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.toml").write_text("[dedup]\npartition_size = 60\n")
    corpus = synthetic_corpus(
        300, seed=4, near_frac=0.2, edit_range=(0.005, 0.1),
        vocab=Vocabulary.make(size=3000, seed=2), words=(60, 120),
    )  # fmt: skip
    corpus.select("id", "text").write_ndjson(tmp_path / "in.jsonl")
    common = ["dedup", "in.jsonl", "--config", "corpus.toml", "--band-buckets", "4"]
    assert _cli(*common, "-o", "local", "--executor", "local") == 0
    assert _cli(*common, "-o", "ray", "--executor", "ray", "--ray-address", cluster.address) == 0
    local = {p.name: p.read_bytes() for p in (tmp_path / "local").iterdir()}
    on_ray = {p.name: p.read_bytes() for p in (tmp_path / "ray").iterdir()}
    assert "kept.parquet" in local and "clusters.parquet" in local
    assert on_ray == local
    import polars as pl

    clusters = pl.read_parquet(tmp_path / "ray" / "clusters.parquet")
    assert set(clusters["kind"].to_list()) == {"exact", "near"}


def test_decontams_scan_and_the_token_counts_as_ray_tasks_equal_local(
    cluster: Any, local_run: Path, generated: Path, place: Path, tmp_path: Path, clean_env: None
) -> None:
    """Decontam's own scan (when dedup's hits are for another index) and assembly's own
    token counts (documents without counts) as Ray tasks: in worker processes (never this
    driver) on the cluster's nodes, several tasks each, with the files and counts of the
    same work in this process."""
    import functools

    import numpy as np

    from builder.assemble_shards import count_tokens_file
    from builder.decontam import decontaminate_files
    from builder.run.executor import TaskLog
    from builder.run.ray_executor import RayExecutor
    from builder.tokens import count_tokens

    config = load_config(_copy(generated, place))
    config = config.model_copy(
        update={"run": config.run.model_copy(update={"ray_address": cluster.address})}
    )
    executor = RayExecutor(config)
    source = local_run / "work" / "semdedup" / "kept.parquet"
    bench = [place / "benchmarks" / "bench.jsonl"]
    settings = config.decontam.model_copy(update={"partition_size": 3})
    nodes = {n.node_id for n in cluster.list_all_nodes()}
    scan, count = TaskLog(), TaskLog()
    mapped = decontaminate_files(
        source, bench, tmp_path / "ray", settings,
        mapper=functools.partial(executor.map_tasks, where=scan.add),
    )  # fmt: skip
    decontaminate_files(source, bench, tmp_path / "here", settings)
    assert mapped.contaminated.height >= 1
    for name in ("hits.parquet", "clean.parquet", "rejected.parquet"):
        a = (tmp_path / "ray" / name).read_bytes()
        assert a == (tmp_path / "here" / name).read_bytes(), name
    rows = count_tokens_file(
        source, tmp_path / "counts.i64", rows=3,
        mapper=functools.partial(executor.map_tasks, where=count.add),
    )  # fmt: skip
    texts = pl.read_parquet(source)["text"].to_list()
    assert rows == len(texts)
    assert np.fromfile(tmp_path / "counts.i64", dtype=np.int64).tolist() == count_tokens(texts)
    for tasks in (scan.to_dict(), count.to_dict()):
        assert tasks["count"] >= 4
        assert tasks["workers"] and os.getpid() not in tasks["workers"]
        assert tasks["nodes"] and set(tasks["nodes"]) <= nodes
