"""Benchmark: `corpus dedup` of a 30k-document JSONL end to end, old code vs this tree.

    python bench/dedup_cli.py                 # 30k documents, 3 alternating runs each
    python bench/dedup_cli.py --docs 10000 --repeat 5
    python bench/dedup_cli.py --baseline c4ff338

The baseline is the package as it was at a git revision (default ``c4ff338``, main before
issue 12 item 5), extracted with ``git archive`` into a temporary directory and run with
that directory first on ``PYTHONPATH``; "new" is this working tree. Both run the same
command, ``python -m builder dedup IN -o OUT`` (default settings, 2 workers on this machine,
diversity report on), in fresh processes, alternating old/new so that load from other
processes hits both alike; the median wall time of each is compared (and the fastest run
of each, the one least disturbed on a shared machine). The corpus (seeded,
cached under bench/_data/) has 300-600-word documents with 5% planted exact copies and 15%
near copies, and a taxonomy_path column (the per-node report).

Results must be the same: the kept rows (every column) and clusters of every new run are
compared with the baseline's (clusters and the diversity files byte for byte). The last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT / "bench" / "_data"
NODES = ["math/algebra", "math/geometry", "cs/algorithms", "cs/systems", "physics/mechanics"]


def corpus(docs: int) -> Path:
    """The seeded JSONL corpus of ``docs`` documents (generated once)."""
    import numpy as np
    import polars as pl

    from tests.support.synthetic import synthetic_corpus

    path = DATA / f"dedup-cli-{docs}.jsonl"
    if path.exists():
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    df = synthetic_corpus(docs, seed=7)
    rng = np.random.default_rng(1)
    tax = [NODES[i] for i in rng.integers(0, len(NODES), df.height)]
    df = df.with_columns(pl.Series("taxonomy_path", tax)).select("id", "text", "taxonomy_path")
    tmp = path.with_suffix(".tmp")
    df.write_ndjson(tmp)
    os.replace(tmp, path)
    return path


def baseline_tree(rev: str, dest: Path) -> Path:
    """The ``builder`` package at ``rev``, extracted into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "builder"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_once(tree: Path, src: Path, out: Path) -> tuple[float, float]:
    """Wall seconds and CPU seconds (the process and its workers) of one run."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cpu0 = _cpu()
    t0 = time.perf_counter()
    # cwd: a directory without a ``builder`` package (``python -m`` puts the cwd first on
    # sys.path, before PYTHONPATH: run from the repository, "old" would import this tree).
    proc = subprocess.run(
        [sys.executable, "-m", "builder", "dedup", str(src), "-o", str(out)],
        env=env,
        cwd=out.parent,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"dedup failed in {tree}:\n{proc.stderr}")
    return seconds, _cpu() - cpu0


def same_results(a: Path, b: Path) -> bool:
    import polars as pl
    from polars.testing import assert_frame_equal

    try:
        assert_frame_equal(pl.read_parquet(a / "kept.parquet"), pl.read_parquet(b / "kept.parquet"))
    except AssertionError:
        return False
    names = sorted(p.name for p in a.iterdir() if p.name != "kept.parquet")
    if names != sorted(p.name for p in b.iterdir() if p.name != "kept.parquet"):
        return False
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=30_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--baseline", default="c4ff338")
    args = ap.parse_args()

    src = corpus(args.docs).resolve()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-dedup-cli-") as tmp:
        base = baseline_tree(args.baseline, Path(tmp) / "old")
        times: dict[str, list[float]] = {"old": [], "new": []}
        cpu: dict[str, list[float]] = {"old": [], "new": []}
        identical = True
        for i in range(args.repeat):
            for name, tree in (("old", base), ("new", ROOT)):
                s, c = run_once(tree, src, Path(tmp) / f"out-{name}")
                times[name].append(s)
                cpu[name].append(c)
                load = os.getloadavg()[0]
                print(f"  run {i + 1} {name}: {s:.2f} s wall, {c:.2f} s CPU (load {load:.2f})")
            identical &= same_results(Path(tmp) / "out-old", Path(tmp) / "out-new")
    old, new = statistics.median(times["old"]), statistics.median(times["new"])
    old_cpu, new_cpu = statistics.median(cpu["old"]), statistics.median(cpu["new"])
    load_after = os.getloadavg()
    print(f"old ({args.baseline}): {old:.2f} s ({args.docs / old:,.0f} docs/s)")
    print(f"new (this tree):  {new:.2f} s ({args.docs / new:,.0f} docs/s)  ratio {old / new:.2f}x")
    best_old, best_new = min(times["old"]), min(times["new"])
    ratio_best = best_old / best_new
    print(f"fastest runs: old {best_old:.2f} s, new {best_new:.2f} s, ratio {ratio_best:.2f}x")
    print(f"CPU seconds (process + workers): old {old_cpu:.2f}, new {new_cpu:.2f}")
    print(f"same results: {identical}; load average {load_before[0]:.2f} -> {load_after[0]:.2f}")
    result = {
        "bench": "dedup_cli",
        "docs": args.docs,
        "baseline": args.baseline,
        "old_seconds": round(old, 3),
        "new_seconds": round(new, 3),
        "old_docs_per_s": round(args.docs / old, 1),
        "new_docs_per_s": round(args.docs / new, 1),
        "ratio": round(old / new, 3),
        "ratio_fastest": round(min(times["old"]) / min(times["new"]), 3),
        "old_cpu_seconds": round(old_cpu, 3),
        "new_cpu_seconds": round(new_cpu, 3),
        "old_runs": [round(t, 3) for t in times["old"]],
        "new_runs": [round(t, 3) for t in times["new"]],
        "same_results": identical,
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
