"""``corpus build`` at two corpus sizes: throughput and whether memory stays flat.

Runs the real ``python -m builder build`` (a subprocess per build, peak RSS from the kernel's
``RUSAGE_CHILDREN``) against the loopback fake OpenAI server (its own process,
answering instantly with varied ~220-word English sections), on the starter taxonomy with
the section template, no code verification, dedup and decontamination (mini benchmark) on,
at ``--small`` and ``--large`` documents. The baseline is the same build at the small size:
``rss_growth`` = peak RSS large / small (flat memory: close to 1).

Targets (issue 11, 2 cores): rss_growth <= 1.3, docs_per_s >= 2,000 at the large size.
Prints one JSON line last: docs, seconds, docs_per_s, peak_rss_mb_small, peak_rss_mb_large,
rss_growth, the stage seconds of the large build, and the relevance gate's speed at the large
size (issue 13's target: >= 1,000 documents/s per core): ``relevance_docs_per_cpu_s`` (documents
per CPU-second of the gate, from the quality stage's counters) and
``quality_docs_per_s_per_core`` (the whole quality stage, wall time, one worker per CPU).

    python bench/build_scale.py --small 20000 --large 200000
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

ROOT = Path(__file__).resolve().parent.parent
DOCS_PER_UNIT = 4

SERVER = r"""
import hashlib, random, re, sys, threading, signal
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.support.fake_openai_server import FakeOpenAIServer, FakeReply
text = " ".join(p.read_text() for p in Path(sys.argv[1], "taxonomy").glob("*.yaml"))
WORDS = sorted(set(re.findall(r"[a-z]{3,}", text.lower())))
def reply(body):
    key = hashlib.sha256(repr(body.get("messages")).encode() + repr(body.get("seed")).encode())
    r = random.Random(key.digest())
    sents = [" ".join(r.choice(WORDS) for _ in range(r.randint(8, 16))).capitalize() + "."
             for _ in range(18)]
    return FakeReply(" ".join(sents), prompt_tokens=300, completion_tokens=330)
srv = FakeOpenAIServer(responder=reply, record=False, use_uvloop=True).start()
print(f"PORT {srv.port}", flush=True)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
stop.wait()
srv.stop()
"""


def start_server() -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(ROOT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        raise SystemExit(f"fake server did not start: {line!r}")
    return proc, int(line.split()[1])


def write_config(project: Path, port: int, docs: int) -> Path:
    project.mkdir(parents=True, exist_ok=True)
    config = project / "corpus.toml"
    config.write_text(
        f"""
[llm]
base_url = "http://127.0.0.1:{port}/v1"
model = "fake-model"
max_concurrency = 256

[taxonomy]
dir = "{ROOT / "taxonomy"}"

[syllabus]
generate_missing = false

[walk]
seed = 1
limit = {docs // DOCS_PER_UNIT}
use_syllabi = false

[generate]
templates_dir = "{ROOT / "templates"}"
templates = ["section"]
documents_per_unit = {DOCS_PER_UNIT}

[verify]
enabled = false

[filters]
# The fake sections are random taxonomy words: the relevance gate (added after this bench)
# would drop ~93% of them, and the later stages would see a fraction of the corpus.
min_relevance = -1

[decontam]
benchmarks = ["{ROOT / "examples" / "benchmarks" / "mini-bench.jsonl"}"]

[output]
dir = "{project / "outputs"}"
run = "scale"
""",
        encoding="utf-8",
    )
    return config


def run_build(config: Path, cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORPUS_")}
    env["CORPUS_CACHE_DIR"] = str(cache)
    env["PYTHONPATH"] = str(ROOT)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "builder", "build", "--config", str(config), "--no-progress"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"build failed ({proc.returncode}):\n{err[-3000:]}")
    run = config.parent / "outputs" / "scale"
    manifest = json.loads((run / "manifest.json").read_text())
    quality = json.loads((run / "work" / "_done" / "quality.json").read_text())["counters"]
    return {
        "seconds": seconds,
        "documents": manifest["counts"]["documents"],
        "stages": manifest.get("stats", {}).get("stages", {}),
        "quality_rows_in": quality["rows_in"],
        "relevance_docs": quality["stats"].get("relevance_docs", 0),
        "relevance_cpu_s": quality["stats"].get("relevance_cpu_seconds", 0.0),
        "log": err,
    }


def measure(docs: int, workdir: Path, port: int) -> dict:
    """One build of ``docs`` documents in a fresh project and cache; peak RSS in MB."""
    project = workdir / f"p{docs}"
    config = write_config(project, port, docs)
    result = run_build(config, workdir / f"cache{docs}")
    # ru_maxrss of RUSAGE_CHILDREN is the largest over every waited-for child: this runs in
    # a fresh helper process per size (see main), so it is this build's peak.
    result["peak_rss_mb"] = _children_maxrss()
    shutil.rmtree(project, ignore_errors=True)
    shutil.rmtree(workdir / f"cache{docs}", ignore_errors=True)
    return result


def _children_maxrss() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=20_000)
    parser.add_argument("--large", type=int, default=200_000)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one build
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = measure(args.one, Path(args.workdir), args.port)
        result.pop("log")
        print(json.dumps(result))
        return
    workdir = Path(tempfile.mkdtemp(prefix="build-scale-"))
    server, port = start_server()
    try:
        results = {}
        for n in (args.small, args.large):
            # A fresh process per size: RUSAGE_CHILDREN's peak then covers one build only.
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    str(n),
                    "--port",
                    str(port),
                    "--workdir",
                    str(workdir),
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results[n] = json.loads(out.strip().splitlines()[-1])
            r = results[n]
            print(
                f"{r['documents']:>8,} documents in {r['seconds']:7.1f} s "
                f"({r['documents'] / r['seconds']:,.0f}/s), peak RSS {r['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    finally:
        server.stdin.close()
        server.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
    small, large = results[args.small], results[args.large]
    # The relevance gate's speed (issue 13: >= 1,000 documents/s per core). Per CPU-second of
    # the gate itself (embedding, scores, the off-topic split: the quality stage's counters),
    # which other work on the machine hardly changes; and, load-sensitive, the whole quality
    # stage's rows per wall second over its one worker per CPU ([run] workers default).
    cpus = os.cpu_count() or 1
    relevance_cpu_s = large["relevance_cpu_s"] or float("nan")
    quality_s = large["stages"].get("quality", {}).get("seconds") or float("nan")
    print(
        json.dumps(
            {
                "docs": large["documents"],
                "seconds": round(large["seconds"], 1),
                "docs_per_s": round(large["documents"] / large["seconds"]),
                "peak_rss_mb_small": round(small["peak_rss_mb"]),
                "peak_rss_mb_large": round(large["peak_rss_mb"]),
                "rss_growth": round(large["peak_rss_mb"] / small["peak_rss_mb"], 2),
                "docs_small": small["documents"],
                "stage_seconds_large": {k: v.get("seconds") for k, v in large["stages"].items()},
                "relevance_docs_per_cpu_s": round(large["relevance_docs"] / relevance_cpu_s),
                "quality_docs_per_s_per_core": round(large["quality_rows_in"] / quality_s / cpus),
                "cpus": cpus,
                "load_average": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


if __name__ == "__main__":
    main()
