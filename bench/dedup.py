"""Benchmark: our dedup vs a naive datasketch baseline on synthetic corpora with planted copies.

    python bench/dedup.py                       # 20k, 100k and 1M documents (slow: ~15 min)
    python bench/dedup.py --sizes 20000,100000  # quicker
    python bench/dedup.py --baseline-docs 5000  # baseline on the first 5k of the 20k set

Corpora (seeded, cached under bench/_data/): documents of 300-600 words from a Zipf
vocabulary; 5% planted exact copies (case/whitespace variants) and 15% near copies with
5-15% word edits, half scattered and half in blocks. Generated in partitions of 20k
documents (copies come from originals of the same partition) and written as Parquet parts,
so the 1M-document run never holds the corpus in memory.

Ours: ``dedup_files`` with default settings (fast mode, 128 perms, 16 x 8, 5-word shingles,
threshold 0.8) on all parts, run in a fresh process per size; peak RSS is the largest sum
of RSS over that process and its workers (sampled every 0.1 s with psutil), and also
reported as ru_maxrss (self + largest child). Baseline: the usual datasketch loop, one
process: MinHash(num_perm=128) per document, ``update`` per shingle (same shingles),
``MinHashLSH(threshold=0.8, num_perm=128)`` query then insert.

Precision: removed documents whose representative (ours) or matched document (baseline)
comes from the same planted family. Recall: planted copies found in the same cluster as
their original, for exact copies and for near copies whose true word-5-gram Jaccard with
the original is >= 0.85 (the target), and per Jaccard bin. The last line printed is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import resource
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATA = ROOT / "bench" / "_data"
PART = 20_000
SEED = 20240601


# -- corpus generation ---------------------------------------------------------------------


def _gen_part(args: tuple[int, int, str]) -> str:
    from builder.dedup.normalize import ngram_hashes, tokenize
    from tests.support.synthetic import Vocabulary, synthetic_corpus

    index, n, out = args
    vocab = Vocabulary.make(size=20_000, seed=SEED)
    df = synthetic_corpus(
        n,
        seed=SEED + index,
        exact_frac=0.05,
        near_frac=0.15,
        edit_range=(0.05, 0.15),
        words=(300, 600),
        vocab=vocab,
        id_prefix=f"p{index:03d}",
    )
    # True Jaccard of each planted copy with its original, from 64-bit shingle hashes.
    tokens = tokenize(df["text"].to_list())
    grams = ngram_hashes(tokens, 5)
    row = {i: k for k, i in enumerate(df["id"].to_list())}
    jac = np.full(df.height, np.nan)
    for k, (planted, fam) in enumerate(
        zip(df["planted"].to_list(), df["family"].to_list(), strict=True)
    ):
        if planted == "original":
            continue
        f = row[fam]
        a = np.unique(grams.hashes[grams.offsets[k] : grams.offsets[k + 1]])
        b = np.unique(grams.hashes[grams.offsets[f] : grams.offsets[f + 1]])
        inter = len(np.intersect1d(a, b, assume_unique=True))
        jac[k] = inter / (len(a) + len(b) - inter)
    df = df.with_columns(pl.Series("true_jaccard", jac))
    path = Path(out) / f"part-{index:05d}.parquet"
    tmp = path.with_suffix(".tmp")
    df.write_parquet(tmp, row_group_size=5_000)
    os.replace(tmp, path)
    return str(path)


def corpus_dir(size: int, workers: int) -> Path:
    """Generate (once) the corpus of ``size`` documents as Parquet parts; return its dir."""
    d = DATA / f"synth-{SEED}-{size}"
    done = d / "DONE"
    if done.exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    jobs = []
    for i, lo in enumerate(range(0, size, PART)):
        jobs.append((i, min(PART, size - lo), str(d)))
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        for _ in pool.imap_unordered(_gen_part, jobs):
            pass
    done.write_text(f"{time.perf_counter() - t0:.1f} s\n")
    print(f"  generated {size} docs in {time.perf_counter() - t0:.0f} s -> {d}", flush=True)
    return d


def truth(d: Path) -> pl.DataFrame:
    return (
        pl.scan_parquet(sorted(d.glob("part-*.parquet")))
        .select("id", "family", "planted", "true_jaccard", "edit_style")
        .collect()
    )


# -- measurement helpers -----------------------------------------------------------------------


class RssSampler:
    """Largest sum of RSS over this process and its children, sampled in a thread."""

    def __init__(self, interval: float = 0.1) -> None:
        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            try:
                total = self.proc.memory_info().rss
                for c in self.proc.children(recursive=True):
                    try:
                        total += c.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _maxrss_mb() -> tuple[float, float]:
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return self_kb / 1024, child_kb / 1024


def _ours(args: tuple[str, str, int]) -> dict:
    """Run in a fresh process: dedup_files over the corpus parts."""
    from builder.dedup import dedup_files
    from builder.settings.dedup import DedupSettings

    src, out, workers = args
    shutil.rmtree(out, ignore_errors=True)
    with RssSampler() as rss:
        t0 = time.perf_counter()
        res = dedup_files(src, out, DedupSettings(), workers=workers)
        seconds = time.perf_counter() - t0
    self_mb, child_mb = _maxrss_mb()
    clusters = pl.read_parquet(Path(out) / "clusters.parquet")
    return {
        "seconds": seconds,
        "signature_seconds": res.stats.signature_seconds,
        "peak_rss_mb": rss.peak / 2**20,
        "maxrss_self_mb": self_mb,
        "maxrss_child_mb": child_mb,
        "stats": res.stats.to_dict(),
        "pairs": clusters.select("id", pl.col("representative_id").alias("other"))
        .filter(pl.col("id") != pl.col("other"))
        .to_dicts(),
    }


def _baseline(args: tuple[str, int]) -> dict:
    """Run in a fresh process: the naive datasketch loop over the first ``limit`` docs."""
    from datasketch import MinHash, MinHashLSH

    src, limit = args
    df = (
        pl.scan_parquet(sorted(Path(src).glob("part-*.parquet")))
        .select("id", "text")
        .head(limit)
        .collect()
    )
    word = re.compile(r"\w+")
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    pairs = []
    t0 = time.perf_counter()
    for doc_id, text in zip(df["id"].to_list(), df["text"].to_list(), strict=True):
        words = word.findall(text.lower())
        m = MinHash(num_perm=128)
        for i in range(max(1, len(words) - 4)):
            m.update(" ".join(words[i : i + 5]).encode("utf-8"))
        found = lsh.query(m)
        if found:
            pairs.append({"id": doc_id, "other": min(found)})
        else:
            lsh.insert(doc_id, m)
    seconds = time.perf_counter() - t0
    self_mb, _ = _maxrss_mb()
    return {"seconds": seconds, "docs": df.height, "peak_rss_mb": self_mb, "pairs": pairs}


def _child(conn, fn, args) -> None:
    try:
        conn.send(("ok", fn(args)))
    except BaseException as exc:  # report anything to the parent, then exit
        conn.send(("error", repr(exc)))
    finally:
        conn.close()


def _in_fresh_process(fn, args):
    """Run ``fn(args)`` in a new (non-daemon) process, so its RSS is measured alone and it
    may start its own workers."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args))
    proc.start()
    child.close()
    status, value = parent.recv()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"benchmark child failed: {value}")
    return value


def evaluate(pairs: list[dict], gold: pl.DataFrame) -> dict:
    """Precision of flagged pairs and recall of planted copies (union-find over pairs)."""
    fam = dict(zip(gold["id"].to_list(), gold["family"].to_list(), strict=True))
    ids = {i: k for k, i in enumerate(gold["id"].to_list())}
    parent = np.arange(len(ids))

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    correct = 0
    for p in pairs:
        a, b = p["id"], p["other"]
        correct += fam[a] == fam[b]
        ra, rb = find(ids[a]), find(ids[b])
        if ra != rb:
            parent[ra] = rb
    precision = correct / len(pairs) if pairs else 1.0
    copies = gold.filter(pl.col("planted") != "original")
    found = np.array(
        [
            find(ids[i]) == find(ids[f])
            for i, f in zip(copies["id"].to_list(), copies["family"].to_list(), strict=True)
        ]
    )
    copies = copies.with_columns(pl.Series("found", found))
    near = copies.filter(pl.col("planted") == "near")
    bins = {}
    for lo, hi in ((0.0, 0.5), (0.5, 0.7), (0.7, 0.8), (0.8, 0.85), (0.85, 0.9), (0.9, 1.01)):
        sel = near.filter((pl.col("true_jaccard") >= lo) & (pl.col("true_jaccard") < hi))
        if sel.height:
            bins[f"{lo:.2f}-{min(hi, 1):.2f}"] = {
                "pairs": sel.height,
                "recall": round(float(sel["found"].mean()), 4),
            }
    target = near.filter(pl.col("true_jaccard") >= 0.85)
    exact = copies.filter(pl.col("planted") == "exact")
    return {
        "flagged": len(pairs),
        "precision": round(precision, 4),
        "recall": round(float(target["found"].mean()), 4) if target.height else None,
        "recall_pairs": target.height,
        "recall_exact": round(float(exact["found"].mean()), 4) if exact.height else None,
        "recall_by_jaccard": bins,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="20000,100000,1000000")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--baseline-docs",
        type=int,
        default=20_000,
        help="documents of the 20k set given to the baseline (0 = skip)",
    )
    ap.add_argument("--keep-output", action="store_true", help="keep bench/_data/out-* dirs")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]

    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores, python "
        f"{platform.python_version()}, workers {args.workers}",
        flush=True,
    )
    runs = []
    base = None
    for size in sizes:
        d = corpus_dir(size, args.workers)
        gold = truth(d)
        out = DATA / f"out-{size}"
        r = _in_fresh_process(_ours, (str(d), str(out), args.workers))
        if not args.keep_output:
            shutil.rmtree(out, ignore_errors=True)
        quality = evaluate(r.pop("pairs"), gold)
        run = {
            "docs": size,
            "seconds": round(r["seconds"], 2),
            "docs_per_s": round(size / r["seconds"], 1),
            "signature_seconds": round(r["signature_seconds"], 2),
            "cluster_seconds": r["stats"]["cluster_seconds"],
            "write_seconds": r["stats"]["write_seconds"],
            "peak_rss_mb": round(r["peak_rss_mb"], 1),
            "maxrss_self_mb": round(r["maxrss_self_mb"], 1),
            "maxrss_child_mb": round(r["maxrss_child_mb"], 1),
            "workers": args.workers,
            **quality,
        }
        runs.append(run)
        print(
            f"ours {size:>8} docs: {run['seconds']:7.1f} s  {run['docs_per_s']:8.0f} docs/s  "
            f"peak RSS {run['peak_rss_mb']:6.0f} MB  precision {run['precision']:.4f}  "
            f"recall(J>=0.85) {run['recall']}  recall(exact) {run['recall_exact']}",
            flush=True,
        )
        print(
            f"   phases: signatures {run['signature_seconds']} s, clusters "
            f"{run['cluster_seconds']} s, write kept {run['write_seconds']} s; load average "
            f"{os.getloadavg()[0]:.1f}",
            flush=True,
        )
        print(f"   recall by true Jaccard: {json.dumps(run['recall_by_jaccard'])}", flush=True)
        if size == 20_000 and args.baseline_docs:
            b = _in_fresh_process(_baseline, (str(d), min(args.baseline_docs, size)))
            gold_b = gold.filter(
                pl.col("id").is_in(
                    pl.scan_parquet(sorted(d.glob("part-*.parquet")))
                    .select("id")
                    .head(b["docs"])
                    .collect()["id"]
                    .implode()
                )
            )
            # only pairs whose original is inside the baseline's subset count for recall
            gold_b = gold_b.filter(pl.col("family").is_in(gold_b["id"].implode()))
            qb = evaluate(b.pop("pairs"), gold_b)
            base = {
                "docs": b["docs"],
                "seconds": round(b["seconds"], 2),
                "docs_per_s": round(b["docs"] / b["seconds"], 1),
                "peak_rss_mb": round(b["peak_rss_mb"], 1),
                "workers": 1,
                **qb,
            }
            print(
                f"baseline {base['docs']:>4} docs: {base['seconds']:7.1f} s  "
                f"{base['docs_per_s']:8.1f} docs/s  peak RSS {base['peak_rss_mb']:6.0f} MB  "
                f"precision {base['precision']:.4f}  recall(J>=0.85) {base['recall']}  "
                f"recall(exact) {base['recall_exact']}",
                flush=True,
            )
            print(f"   recall by true Jaccard: {json.dumps(base['recall_by_jaccard'])}", flush=True)

    last = runs[-1]
    at20k = next((r for r in runs if r["docs"] == 20_000), None)
    bps = base["docs_per_s"] if base else None
    summary = {
        "docs": last["docs"],
        "docs_per_s": last["docs_per_s"],
        "seconds": last["seconds"],
        "baseline_docs_per_s": bps,
        "speedup": round(at20k["docs_per_s"] / bps, 1) if (bps and at20k) else None,
        "speedup_largest": round(last["docs_per_s"] / bps, 1) if bps else None,
        "peak_rss_mb": last["peak_rss_mb"],
        "precision": last["precision"],
        "recall": last["recall"],
        "recall_exact": last["recall_exact"],
        "workers": args.workers,
        "baseline": base,
        "runs": runs,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
