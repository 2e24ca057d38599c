"""Peak memory of the quality passes over the whole corpus: streamed vs in memory.

The diversity summary (``quality_summary``: per-node diversity and the embedding map) and
semantic dedup (``streamed_semantic_clusters``) join the corpus with its 256-d embeddings.
The baseline, in the same run, is the obvious in-memory way (wave 2's first version): read
the whole corpus and every embedding (``to_list`` into a float32 array), then
``node_diversity`` / ``embedding_map`` / ``semantic_clusters`` of the arrays. Each pass runs
in a fresh subprocess (peak RSS from ``ru_maxrss``) at two corpus sizes; prints per pass the
peak at each size, the growth (large / small) and the seconds, and one JSON line last.

    PYTHONPATH=. python bench/quality_memory.py --small 50000 --large 200000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PASSES = ("summary_streamed", "summary_in_memory", "semdedup_streamed", "semdedup_in_memory")


def make(tmp: Path, n: int) -> None:
    """A clean corpus of ``n`` ~1.3 KB documents and the quality stage's embeddings."""
    import polars as pl

    from tests.test_quality_streaming import _run_dir, corpus

    tmp.mkdir(parents=True, exist_ok=True)
    frame, x = corpus(n, dim=256)
    frame = frame.with_columns(pl.concat_str([pl.col("text")] * 8, separator=" "))
    _run_dir(tmp, frame, x)


def run_pass(tmp: Path, name: str) -> dict:
    import numpy as np
    import polars as pl

    from builder.config import CorpusConfig
    from builder.run.paths import RunDir
    from builder.stages.base import RunContext

    ctx = RunContext(config=CorpusConfig(), paths=RunDir(tmp / "run"))
    clean = tmp / "clean.parquet"
    start = time.perf_counter()
    if name == "summary_streamed":
        from builder.quality.hooks import quality_summary

        quality_summary(ctx, clean)
    elif name == "semdedup_streamed":
        from builder.quality.buckets import streamed_semantic_clusters

        streamed_semantic_clusters(ctx, clean, threshold=0.95, cluster_size=1000)
    else:
        from builder.quality.metrics import embedding_map, node_diversity
        from builder.quality.semdedup import semantic_clusters

        docs = pl.read_parquet(clean)
        ids = docs["id"].to_list()
        parts = sorted((ctx.paths.stage_dir("quality") / "embeddings").glob("*.parquet"))
        table = pl.concat([pl.read_parquet(p) for p in parts])
        found = pl.DataFrame({"id": ids}).join(table, on="id", how="left", maintain_order="left")
        x = np.asarray(found["embedding"].to_list(), dtype=np.float32)
        if name == "summary_in_memory":
            node_diversity(docs, x)
            embedding_map(x, docs["discipline"].fill_null("?").to_list(), ids)
        else:
            lengths = docs["text"].str.len_chars().to_numpy()
            semantic_clusters(ids, x, threshold=0.95, cluster_size=1000, lengths=lengths)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_mb": round(peak), "seconds": round(time.perf_counter() - start, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=50_000)
    parser.add_argument("--large", type=int, default=200_000)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        tmp, name = args.child
        result = make(Path(tmp), int(name)) if name.isdigit() else run_pass(Path(tmp), name)
        print(json.dumps(result))
        return
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    results: dict[str, dict] = {p: {} for p in PASSES}
    with tempfile.TemporaryDirectory() as root:
        for size in (args.small, args.large):
            tmp = Path(root) / str(size)
            child = [sys.executable, __file__, "--child", str(tmp)]
            subprocess.run([*child, str(size)], env=env, check=True, capture_output=True)
            for name in PASSES:
                out = subprocess.run(
                    [*child, name], env=env, check=True, capture_output=True, text=True
                )
                results[name][size] = json.loads(out.stdout.strip().splitlines()[-1])
    summary: dict = {"docs": [args.small, args.large], "load_average": os.getloadavg()[0]}
    for name, by_size in results.items():
        small, large = by_size[args.small], by_size[args.large]
        growth = round(large["peak_mb"] / small["peak_mb"], 2)
        print(
            f"{name:20} peak {small['peak_mb']:>5} MB -> {large['peak_mb']:>5} MB "
            f"(x{growth}), {small['seconds']} s -> {large['seconds']} s"
        )
        summary[name] = {
            "peak_mb": [small["peak_mb"], large["peak_mb"]],
            "rss_growth": growth,
            "seconds": [small["seconds"], large["seconds"]],
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
