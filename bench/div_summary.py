"""The diversity summary alone (``quality_summary``) on a kept run: CPU, wall, peak RSS.

usage: PYTHONPATH=<tree> python bench/div_summary.py DIR/p/corpus.toml OUTDIR [--profile]

Runs ``builder.quality.hooks.quality_summary`` on the run's ``decontam/clean.parquet`` (as
the assemble stage does), then copies the files it wrote (``work/diversity/quality_*``)
to OUTDIR so two trees' outputs can be compared byte for byte (``cmp``). Prints the process
CPU seconds (every thread), the wall seconds and the peak RSS as one JSON line.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

# As ``corpus`` sets it (builder/cli): one BLAS thread, else its idle threads spin.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main() -> None:
    from builder.config import load_config
    from builder.quality.hooks import quality_summary
    from builder.run.build import open_context

    config_path, outdir = Path(sys.argv[1]), Path(sys.argv[2])
    config = load_config(config_path)
    with contextlib.ExitStack() as stack:
        ctx = open_context(config, stack=stack)
        clean = ctx.paths.stage_dir("decontam") / "clean.parquet"
        cpu0, wall0 = time.process_time(), time.perf_counter()
        quality_summary(ctx, clean)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        outdir.mkdir(parents=True, exist_ok=True)
        for path in sorted((ctx.paths.work / "diversity").glob("quality_*")):
            shutil.copy2(path, outdir / path.name)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps({"cpu_s": round(cpu, 2), "wall_s": round(wall, 2), "peak_rss_mb": peak}))


if __name__ == "__main__":
    main()
