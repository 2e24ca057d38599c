"""CPU seconds of the ``generate`` stage per 1,000 documents: this tree against a baseline tree.

The project is ``bench/build_scale.py``'s (starter taxonomy, section template, 4 documents
per unit) against the same loopback fake server in its own process (instant answers, varied
~220-word sections), so what is measured is the builder's own work per request: planning
and rendering, the engine (cache lookups and writes, admission, the I/O thread's HTTP) and
the stage's rows and journal. For each tree the syllabi and walk stages run once; then each
trial copies that run directory, takes a fresh LLM cache and runs ``generate`` alone in a
fresh process (``run_named(cfg, ["generate"])``), timing it with ``time.process_time()``
(every thread of the process) plus the CPU of the processes it started and waited for (the
planning process of builder.generate_ahead); the server's CPU is not counted. Trials of
the two trees alternate, so a load change on the shared machine hits both alike; the figure
per tree is the median over its trials.

The two trees must produce the same work: the bench checks that their generated partitions
hold the same rows (every column but ``created_at``, a wall-clock timestamp) and that their
caches hold the same keys and request bodies.

    python bench/generate_speed.py --docs 20000 --trials 3 --baseline /tmp/base
    # the baseline: git archive 3e70984 | tar -x -C /tmp/base

Prints one JSON line last: docs, trials, cpu_s_per_1k_docs of baseline and current, the
ratio (current / baseline), wall seconds and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import build_scale  # noqa: E402  (the same server and project as the build benchmark)

WORKER = r"""
import json, resource, sys, time
from builder.config import load_config
from builder.run.build import run_named
config, run_dir, cache_dir, phase = sys.argv[1:5]
cfg = load_config(config)
names = ["syllabi", "walk"] if phase == "walk" else ["generate"]
quiet = lambda message: None
def children():
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime
c0, k0, w0 = time.process_time(), children(), time.perf_counter()
summary = run_named(cfg, names, run_dir, cache_dir=cache_dir, progress=False, log=quiet)
c1, k1, w1 = time.process_time(), children(), time.perf_counter()
print(json.dumps({"cpu_s": c1 - c0 + k1 - k0, "child_cpu_s": k1 - k0, "wall_s": w1 - w0,
                  "sent": summary.requests_sent}))
"""


def _worker(tree: Path, config: Path, run_dir: Path, cache: Path, phase: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORPUS_")}
    env["PYTHONPATH"] = str(tree)
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, str(config), str(run_dir), str(cache), phase],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{phase} in {tree} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _rows(run_dir: Path) -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for part in sorted((run_dir / "work" / "generate").glob("part-*.parquet")):
        table = pq.read_table(part)
        rows.extend(table.drop_columns(["created_at"]).to_pylist())
    return rows


def _cache(cache: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(cache / "llm-cache.sqlite3") as conn:
        return conn.execute("SELECT key, request FROM responses ORDER BY key").fetchall()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--baseline", required=True, help="a tree of the baseline code")
    parser.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    trees = {"baseline": Path(args.baseline).resolve(), "current": ROOT}
    work = Path(tempfile.mkdtemp(prefix="generate-speed-"))
    server, port = build_scale.start_server()
    load = [os.getloadavg()[0]]
    cpu: dict[str, list[float]] = {name: [] for name in trees}
    wall: dict[str, list[float]] = {name: [] for name in trees}
    try:
        config = build_scale.write_config(work / "project", port, args.docs)
        walked = {}
        for name, tree in trees.items():
            walked[name] = work / f"walked-{name}"
            _worker(tree, config, walked[name], work / "walk-cache", "walk")
        checked = {}
        for trial in range(args.trials):
            order = list(trees) if trial % 2 == 0 else list(reversed(trees))
            for name in order:
                run_dir = work / f"run-{name}"
                cache = work / f"cache-{name}"
                shutil.rmtree(run_dir, ignore_errors=True)
                shutil.rmtree(cache, ignore_errors=True)
                shutil.copytree(walked[name], run_dir)
                r = _worker(trees[name], config, run_dir, cache, "generate")
                if r["sent"] != args.docs:
                    raise SystemExit(f"{name}: {r['sent']} requests sent, expected {args.docs}")
                cpu[name].append(r["cpu_s"])
                wall[name].append(r["wall_s"])
                load.append(os.getloadavg()[0])
                print(
                    f"trial {trial} {name:>8}: cpu {r['cpu_s']:6.2f} s"
                    f" (child processes {r.get('child_cpu_s', 0.0):5.2f} s),"
                    f" wall {r['wall_s']:6.2f} s, load {load[-1]:.1f}",
                    flush=True,
                )
                if trial == 0:
                    checked[name] = (_rows(run_dir), _cache(cache))
        same_rows = checked["baseline"][0] == checked["current"][0]
        same_cache = checked["baseline"][1] == checked["current"][1]
        if not (same_rows and same_cache):
            raise SystemExit(f"outputs differ: rows equal {same_rows}, cache equal {same_cache}")
    finally:
        build_scale.stop_server(server)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    per_1k = {name: statistics.median(v) / args.docs * 1000 for name, v in cpu.items()}
    print(
        json.dumps(
            {
                "docs": args.docs,
                "trials": args.trials,
                "cpu_s_per_1k_docs_baseline": round(per_1k["baseline"], 3),
                "cpu_s_per_1k_docs_current": round(per_1k["current"], 3),
                "ratio": round(per_1k["current"] / per_1k["baseline"], 3),
                "wall_s_baseline": round(statistics.median(wall["baseline"]), 2),
                "wall_s_current": round(statistics.median(wall["current"]), 2),
                "same_rows": same_rows,
                "same_cache": same_cache,
                "load_avg": [round(x, 1) for x in (min(load), max(load))],
            }
        )
    )


if __name__ == "__main__":
    main()
