"""The same warm run directory built with the local executor and on a Ray cluster.

Generates ``--docs`` documents once (the real ``corpus generate`` against the loopback fake
OpenAI server of ``bench/build_scale.py``, answering instantly with ~220-word sections; the
starter taxonomy, the section template, no code verification), then restores that run
directory twice and runs ``corpus build --json`` on it: once with ``--executor local`` (the
baseline, same run) and once with ``--executor ray`` against a 2-node cluster (head + one
worker, 1 CPU each, 127.0.0.2) that this script starts with ``ray.cluster_utils.Cluster``.
Generation is up to date in both (nothing is sent); filter maps over the partitions
(``--partition-rows`` a task); dedup's signatures and band buckets, decontam's n-gram scan
and assemble's token counts are the executor's tasks (Ray tasks, or the local executor's
worker processes: ``[run] workers``, one per CPU here); report runs on the driver.

Prints seconds for each build and their ratio, per-stage seconds (decontam and assemble
side by side), how many decontam and token-count tasks ran on how many processes and Ray
nodes, what Ray's fixed costs are (driver connect, one tiny task), the load average, checks
that both builds wrote the same shards and decontam outputs, and one JSON line last. Target
(issue 12, 2 cores): Ray <= 1.5x local for the stages with real per-document work.

    python bench/scale.py --docs 100000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from builder.util.files import file_sha256  # noqa: E402

NODE_IP = "127.0.0.2"
MB = 2**20


def _build_scale() -> Any:
    spec = importlib.util.spec_from_file_location("build_scale", ROOT / "bench" / "build_scale.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORPUS_")}
    env["CORPUS_CACHE_DIR"] = str(cache)
    env["PYTHONPATH"] = str(ROOT)
    return env


def _corpus(argv: list[str], cache: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "builder", *argv],
        cwd=ROOT,
        env=_env(cache),
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"corpus {argv[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def _build(config: Path, cache: Path, run: Path, snapshot: Path, *extra: str) -> dict[str, Any]:
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(snapshot, run)
    seconds, out = _corpus(
        ["build", "--config", str(config), "--json", "--no-progress", *extra], cache
    )
    summary = json.loads(out)
    manifest = json.loads((run / "manifest.json").read_text())
    done = run / "work" / "_done"

    def counters(stage: str) -> dict[str, Any]:
        return json.loads((done / f"{stage}.json").read_text())["counters"]

    decontam = counters("decontam")
    return {
        "seconds": round(seconds, 2),
        "stages": summary["stage_seconds"],
        "documents": summary["documents"],
        "sent": summary["requests_sent"],
        "shards": [s["sha256"] for s in manifest["shards"]],
        "decontam_files": {
            p.name: file_sha256(p) for p in sorted((run / "work" / "decontam").glob("*.parquet"))
        },
        "contaminated": decontam["stats"].get("contaminated", 0),
        "filter_tasks": counters("filter")["partitions_run"],
        "tasks": {"decontam": decontam.get("tasks"), "tokens": counters("assemble")["token_tasks"]},
    }


def _tasks(record: dict[str, Any] | None) -> str:
    if not record:
        return "-"
    nodes = f" on {len(record['nodes'])} node(s)" if record["nodes"] else ""
    took = f"{record['seconds']:.2f} s in " if "seconds" in record else ""
    return f"{took}{record['count']} tasks, {len(record['workers'])} process(es){nodes}"


def _fixed_costs(address: str) -> dict[str, float]:
    """What a Ray build pays whatever its size: connecting the driver, a tiny task."""
    t0 = time.perf_counter()
    import ray

    imported = time.perf_counter() - t0
    ray.init(address=address, _node_ip_address=NODE_IP, log_to_driver=False)
    connected = time.perf_counter() - t0 - imported

    @ray.remote
    def tiny(x: int) -> int:
        return x

    ray.get([tiny.remote(i) for i in range(20)])  # workers warm
    t1 = time.perf_counter()
    ray.get([tiny.remote(i) for i in range(200)])
    per_task = (time.perf_counter() - t1) / 200
    ray.shutdown()
    return {
        "import_ray_s": round(imported, 2),
        "connect_s": round(connected, 2),
        "tiny_task_ms": round(per_task * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--partition-rows", type=int, default=5_000)
    args = parser.parse_args()
    scale = _build_scale()
    load_start = os.getloadavg()
    print(f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")
    workdir = Path(tempfile.mkdtemp(prefix="scale-"))
    raytmp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    os.environ["RAY_TMPDIR"] = str(raytmp)
    server, port = scale.start_server()
    cluster = None
    try:
        project = workdir / "p"
        config = scale.write_config(project, port, args.docs)
        with config.open("a", encoding="utf-8") as fh:
            units = max(1, args.partition_rows // scale.DOCS_PER_UNIT)
            fh.write(f"\n[run]\npartition_rows = {args.partition_rows}\n")
            fh.write(f"units_per_partition = {units}\n")
        cache = workdir / "cache"
        gen_s, _ = _corpus(["generate", "--config", str(config)], cache)
        run = project / "outputs" / "scale"
        snapshot = workdir / "snapshot"
        shutil.copytree(run, snapshot)
        print(f"generated {args.docs:,} documents in {gen_s:.1f} s (warm run directory)")

        local = _build(config, cache, run, snapshot, "--executor", "local")
        print(f"local: {local['seconds']:.1f} s  {local['stages']}", flush=True)

        from ray.cluster_utils import Cluster

        t0 = time.perf_counter()
        node = {"num_cpus": 1, "node_ip_address": NODE_IP, "object_store_memory": 200 * MB}
        cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        start_s = time.perf_counter() - t0
        fixed = _fixed_costs(cluster.address)
        ray_run = _build(
            config, cache, run, snapshot, "--executor", "ray", "--ray-address", cluster.address
        )
        print(f"ray:   {ray_run['seconds']:.1f} s  {ray_run['stages']}", flush=True)
    finally:
        if cluster is not None:
            cluster.shutdown()
        server.stdin.close()
        server.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(raytmp, ignore_errors=True)
    load_end = os.getloadavg()
    same = local["shards"] == ray_run["shards"]
    same_decontam = local["decontam_files"] == ray_run["decontam_files"]
    stages = sorted(set(local["stages"]) | set(ray_run["stages"]))
    ratios = {
        s: round(ray_run["stages"].get(s, 0) / local["stages"][s], 2)
        for s in stages
        if local["stages"].get(s)
    }
    print(f"{'stage':<10} {'local s':>8} {'ray s':>8} {'ratio':>6}")
    for s in stages:
        print(
            f"{s:<10} {local['stages'].get(s, 0):>8.2f} {ray_run['stages'].get(s, 0):>8.2f} "
            f"{ratios.get(s, 0):>6.2f}"
        )
    print(f"cluster start {start_s:.1f} s (not in the build); fixed costs {fixed}")
    for stage, key in (("decontam", "decontam"), ("assemble", "tokens")):
        print(
            f"{stage}: local {local['stages'].get(stage, 0):.2f} s "
            f"({_tasks(local['tasks'][key])}), ray {ray_run['stages'].get(stage, 0):.2f} s "
            f"({_tasks(ray_run['tasks'][key])})"
        )
    print(
        f"same shards: {same}; same decontam outputs: {same_decontam}; documents "
        f"{local['documents']:,} / {ray_run['documents']:,}; contaminated "
        f"{local['contaminated']} / {ray_run['contaminated']}"
    )
    print(f"load average at end: {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    print(
        json.dumps(
            {
                "docs": args.docs,
                "documents": local["documents"],
                "partition_rows": args.partition_rows,
                "filter_tasks": ray_run["filter_tasks"],
                "local_s": local["seconds"],
                "ray_s": ray_run["seconds"],
                "ratio": round(ray_run["seconds"] / local["seconds"], 2),
                "filter_ratio": ratios.get("filter"),
                "decontam_s": [local["stages"].get("decontam"), ray_run["stages"].get("decontam")],
                "assemble_s": [local["stages"].get("assemble"), ray_run["stages"].get("assemble")],
                "tasks": {"local": local["tasks"], "ray": ray_run["tasks"]},
                "stage_ratios": ratios,
                "local_stages": local["stages"],
                "ray_stages": ray_run["stages"],
                "cluster_start_s": round(start_s, 1),
                **fixed,
                "same_shards": same,
                "same_decontam": same_decontam,
                "load_average": [round(load_start[0], 2), round(load_end[0], 2)],
                "requests_sent": [local["sent"], ray_run["sent"]],
            }
        )
    )


if __name__ == "__main__":
    main()
