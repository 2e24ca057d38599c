"""Benchmark: ``export_run`` (chat format, node split) on a synthetic run, memory vs size.

The export reads one input shard at a time, so its peak memory should stay flat as the run
grows. Baseline, in the same run: the converter people write by hand -- read every shard
into one table, turn it into a list of dicts, build the chat rows, write one Parquet file --
whose memory grows with the corpus. Each measurement runs in a fresh process (peak RSS from
``getrusage``).

    .venv/bin/python bench/export.py [--rows 50000 200000] [--shard-rows 50000]

Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OURS = """
import sys
from builder.export import ExportOptions, export_run
export_run(sys.argv[1], sys.argv[2], ExportOptions(format="chat", split_by="node",
           split_level="subject", test_fraction=0.1))
"""

BASELINE = """
import sys, glob, json
import pyarrow as pa, pyarrow.parquet as pq
rows = pq.read_table(sorted(glob.glob(sys.argv[1] + "/documents/*.parquet"))).to_pylist()
out = []
for r in rows:
    if r["kind"] != "exercise":
        continue
    s = json.loads(r["structured"])
    answer = s["worked_solution"] + "\\n\\n**Final answer:** " + s["final_answer"]
    out.append({"messages": [{"role": "user", "content": s["problem"]},
                             {"role": "assistant", "content": answer}],
                "id": r["id"], "taxonomy_path": r["taxonomy_path"]})
pq.write_table(pa.Table.from_pylist(out), sys.argv[2] + ".parquet")
"""


def make_run(root: Path, rows: int, shard_rows: int) -> Path:
    """A run directory with ``rows`` quantitative exercises (~1.5 KB each) in shards."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = root / "documents"
    docs.mkdir(parents=True)
    words = "the method explains why each step matters when the input grows".split()
    for shard, start in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - start)
        recs = []
        for i in range(start, start + n):
            prose = " ".join(words[(i + k) % len(words)] for k in range(120))
            structured = {
                "problem": f"Problem {i}: {prose}",
                "worked_solution": f"Step 1. {prose}\nStep 2. {i} + 1 = {i + 1}",
                "final_answer": str(i + 1),
            }
            recs.append(
                {
                    "id": f"{i:032x}",
                    "text": f"### Exercise\n\n{structured['problem']}",
                    "kind": "exercise",
                    "exercise_type": "quantitative",
                    "structured": json.dumps(structured),
                    "taxonomy_path": f"d{i % 7}/s{i % 97}/t{i % 1009}",
                    "template": "exercise_quantitative",
                    "model": "bench-model",
                    "verified": True,
                    "parent_id": None,
                }
            )
        pq.write_table(pa.Table.from_pylist(recs), docs / f"part-{shard:05d}.parquet")
    return root


def measure(code: str, run: Path, out: Path) -> dict[str, float]:
    """Seconds and peak RSS (MB) of ``code`` in a fresh interpreter (its own rusage)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, str(run), str(out)], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed with exit code {proc.returncode}")
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--shard-rows", type=int, default=50_000)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for rows in sorted(args.rows):
            run = make_run(Path(tmp) / f"run{rows}", rows, args.shard_rows)
            ours = measure(OURS, run, Path(tmp) / f"ours{rows}")
            base = measure(BASELINE, run, Path(tmp) / f"base{rows}")
            line = {"rows": rows, "ours": ours, "baseline": base}
            print(json.dumps(line), flush=True)
            results.append(line)
    first, last = results[0], results[-1]
    print(
        json.dumps(
            {
                "rows": [r["rows"] for r in results],
                "ours_rows_per_s": round(last["rows"] / last["ours"]["seconds"]),
                "baseline_rows_per_s": round(last["rows"] / last["baseline"]["seconds"]),
                "ours_peak_rss_mb": [r["ours"]["peak_rss_mb"] for r in results],
                "baseline_peak_rss_mb": [r["baseline"]["peak_rss_mb"] for r in results],
                "ours_rss_growth": round(
                    last["ours"]["peak_rss_mb"] / first["ours"]["peak_rss_mb"], 2
                ),
                "load_average": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
