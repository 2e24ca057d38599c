"""Peak RSS of every stage of ``corpus build``: inside one build, and each stage alone.

Builds one run directory of ``--docs`` documents with ``bench/build_scale.py``'s project
(loopback fake server, starter taxonomy, no code verification) and measures two things:

* **in the build** (what ``build_scale.py``'s peak is made of): the real
  ``python -m builder build`` runs with a wrapper around ``LocalExecutor.run_stage`` that
  resets the process's peak RSS (``/proc/self/clear_refs`` = 5, Linux) before each stage and
  reads it (``VmHWM``) after, so each stage's figure is its own peak in the build's process,
  including everything earlier stages left behind (``start_mb``: RSS when the stage began,
  after ``release_memory``). ``children_mb`` is the largest peak of any child process so far
  (process pools), which ``RUSAGE_CHILDREN`` of the bench would report if it were larger.
* **alone** (``--alone``): each stage rerun on its own (``corpus <stage> --run``, its
  outputs and marker deleted first so it is not skipped) in a fresh subprocess whose peak RSS
  comes from ``wait4``. Generation reruns against the warm LLM cache (every request cached).
  With ``--baseline`` (a code tree, e.g. ``git archive main``) each stage runs once with that
  tree on the path and once with this one; the reports must be byte-identical and the shards
  the same sha256.

The last line is one JSON object with the peaks in MB and the load average.

    python bench/stage_rss.py --docs 20000 --alone --baseline /tmp/base
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_scale import ROOT, start_server, write_config  # noqa: E402

sys.path.insert(0, str(ROOT))
from builder.stages import STAGES as BUILD_STAGES  # noqa: E402

#: Stages ``--alone`` reruns, in build order (syllabi and walk have no ``--run`` command:
#: the in-build profile covers them).
STAGES = tuple(s for s in BUILD_STAGES if s not in ("syllabi", "walk"))

#: Runs ``python -m builder`` with a per-stage peak RSS probe around every stage.
PROBE = r"""
import json, re, resource, sys
from builder.run import executor

def _status():
    text = open("/proc/self/status").read()
    return {k: int(re.search(k + r":\s+(\d+)", text).group(1)) // 1024 for k in ("VmRSS", "VmHWM")}

_run_stage = executor.LocalExecutor.run_stage

def run_stage(self, stage, ctx):
    start = _status()["VmRSS"]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    try:
        return _run_stage(self, stage, ctx)
    finally:
        now = _status()
        kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
        row = {"stage": stage.name, "start_mb": start, "peak_mb": now["VmHWM"],
               "end_mb": now["VmRSS"], "children_mb": kids}
        print("STAGE_RSS " + json.dumps(row), file=sys.stderr, flush=True)

executor.LocalExecutor.run_stage = run_stage
sys.argv = ["corpus", *sys.argv[1:]]
from builder.cli import main
main()
"""


def _env(code: Path, config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORPUS_")}
    env["PYTHONPATH"] = str(code)
    env["CORPUS_CACHE_DIR"] = str(config.parent / "cache")
    return env


def profile_build(code: Path, config: Path) -> tuple[list[dict], float, float]:
    """Run ``corpus build`` with the probe; its stage rows, whole-process peak and seconds."""
    args = [sys.executable, "-c", PROBE, "build", "--config", str(config), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        args, cwd=code, env=_env(code, config), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    _pid, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"build failed:\n{err[-3000:]}")
    tag = "STAGE_RSS "
    rows = [json.loads(x[len(tag) :]) for x in err.splitlines() if x.startswith(tag)]
    return rows, usage.ru_maxrss / 1024, seconds


def _outputs(run: Path, stage: str) -> list[Path]:
    """What ``stage`` writes (deleted before a rerun), from the stage's own ``outputs``."""
    import contextlib

    from builder.config import load_config
    from builder.run.build import open_context
    from builder.stages import stage_named

    config = load_config(run.parent.parent / "corpus.toml")
    with contextlib.ExitStack() as stack:
        ctx = open_context(config, stack=stack)
        return list(stage_named(stage).outputs(ctx))


def run_stage(code: Path, config: Path, run: Path, stage: str) -> float:
    """Run one stage alone with ``code`` first on the path; its peak RSS in MB."""
    for p in _outputs(run, stage):
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    args = [sys.executable, "-m", "builder", stage, "--config", str(config), "--run", "scale"]
    proc = subprocess.Popen(
        args, cwd=code, env=_env(code, config), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None
    err = proc.stderr.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{stage} failed with {code}:\n{err.decode()[-3000:]}")
    return usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--alone", action="store_true", help="also rerun each stage alone")
    parser.add_argument("--stages", default=",".join(STAGES), help="stages for --alone")
    parser.add_argument("--baseline", type=Path, help="code tree to compare with (--alone)")
    parser.add_argument("--keep", type=Path, help="build here and keep the run directory")
    args = parser.parse_args()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="stage-rss-"))
    server, port = start_server()
    try:
        project = workdir / "p"
        config = write_config(project, port, args.docs)
        result: dict = {"docs_requested": args.docs, "load": os.getloadavg()[0]}
        rows, peak, seconds = profile_build(ROOT, config)
        run = project / "outputs" / "scale"
        manifest = json.loads((run / "manifest.json").read_text())
        result["docs"] = manifest["counts"]["documents"]
        # clear_refs also resets the kernel peak wait4 reports: the peak is the largest stage's.
        result["build_peak_mb"] = max([r["peak_mb"] for r in rows], default=round(peak))
        result["build_seconds"] = round(seconds, 1)
        result["in_build"] = {r["stage"]: r for r in rows}
        for r in rows:
            print(
                f"in build {r['stage']:<9} start {r['start_mb']:6} MB  peak {r['peak_mb']:6} MB"
                f"  end {r['end_mb']:6} MB  children {r['children_mb']:6} MB",
                flush=True,
            )
        if args.alone:
            codes = {"new": ROOT}
            if args.baseline:
                codes = {"baseline": args.baseline, "new": ROOT}
            reports: dict[str, bytes] = {}
            shards: dict[str, list[str]] = {}
            alone: dict[str, float] = {}
            for stage in args.stages.split(","):  # each stage with both trees, same inputs
                for label, code in codes.items():
                    mb = run_stage(code, config, run, stage)
                    alone[f"{stage}_{label}"] = round(mb)
                    print(f"{label:>8} {stage:<9} alone peak RSS {mb:7.0f} MB", flush=True)
                    if stage == "report":
                        reports[label] = (run / "report.html").read_bytes()
                    if stage == "assemble":
                        manifest = json.loads((run / "manifest.json").read_text())
                        shards[label] = [s["sha256"] for s in manifest["shards"]]
            result["alone_mb"] = alone
            if args.baseline and reports:
                result["report_identical"] = reports["baseline"] == reports["new"]
            if args.baseline and shards:
                result["shards_identical"] = shards["baseline"] == shards["new"]
        result["load_end"] = os.getloadavg()[0]
    finally:
        server.stdin.close()
        server.wait(30)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
