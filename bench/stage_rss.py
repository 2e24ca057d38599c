"""Peak RSS of the decontam, assemble and report stages alone, against a baseline code tree.

Builds one run directory of ``--docs`` documents with ``bench/build_scale.py``'s project
(loopback fake server, starter taxonomy, no code verification), then reruns each of the
``decontam``, ``assemble`` and ``report`` stages on its own (``corpus <stage> --run``, its
outputs deleted first so it is not skipped) in a fresh subprocess whose peak RSS comes from
``wait4``: once with ``--baseline`` (a code tree, e.g. ``git archive main``) on the path and
once with this tree. The two reports must be byte-identical (the same run directory, the
same stats); the last line is one JSON object with the peaks in MB.

    python bench/stage_rss.py --docs 20000 --baseline /tmp/base
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_scale import ROOT, run_build, start_server, write_config  # noqa: E402

STAGES = ("decontam", "assemble", "report")


def _outputs(run: Path, stage: str) -> list[Path]:
    if stage == "decontam":
        return [run / "work" / "decontam" / n for n in ("clean.parquet", "hits.parquet")]
    if stage == "assemble":
        return [run / "manifest.json"]
    return [run / "report.html"]


def run_stage(code: Path, config: Path, run: Path, stage: str) -> float:
    """Run one stage alone with ``code`` first on the path; its peak RSS in MB."""
    for p in _outputs(run, stage):
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORPUS_")}
    env["PYTHONPATH"] = str(code)
    env["CORPUS_CACHE_DIR"] = str(config.parent / "cache")
    args = [sys.executable, "-m", "builder", stage, "--config", str(config), "--run", "scale"]
    proc = subprocess.Popen(
        args, cwd=code, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
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
    parser.add_argument("--baseline", type=Path, help="code tree to compare with")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="stage-rss-"))
    server, port = start_server()
    try:
        project = workdir / "p"
        config = write_config(project, port, args.docs)
        built = run_build(config, project / "cache")
        run = project / "outputs" / "scale"
        result: dict = {"docs": built["documents"], "load": os.getloadavg()[0]}
        codes = {"new": ROOT}
        if args.baseline:
            codes = {"baseline": args.baseline, "new": ROOT}
        reports: dict[str, bytes] = {}
        shards: dict[str, list[str]] = {}
        for stage in STAGES:  # each stage with both trees over the same inputs
            for label, code in codes.items():
                mb = run_stage(code, config, run, stage)
                result[f"{stage}_{label}_mb"] = round(mb)
                print(f"{label:>8} {stage:<9} peak RSS {mb:7.0f} MB", flush=True)
                if stage == "report":
                    reports[label] = (run / "report.html").read_bytes()
                if stage == "assemble":
                    manifest = json.loads((run / "manifest.json").read_text())
                    shards[label] = [s["sha256"] for s in manifest["shards"]]
        if args.baseline:
            result["report_identical"] = reports["baseline"] == reports["new"]
            result["shards_identical"] = shards["baseline"] == shards["new"]
        result["load_end"] = os.getloadavg()[0]
    finally:
        server.stdin.close()
        server.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
