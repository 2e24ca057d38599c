"""Benchmark: the LLM engine vs the obvious baseline, and the embedded server vs in-process.

    .venv/bin/python bench/llm_engine.py            # everything (~3-5 min on 2 cores)
    .venv/bin/python bench/llm_engine.py --quick    # smaller runs, no embedded comparison
    .venv/bin/python bench/llm_engine.py --only-429 # the 429 scenarios alone (~4 min)

1. Throughput and client CPU against the fake OpenAI server (tests/support/fake_openai_server.py),
   which runs as a separate process so its CPU is not counted as the client's:
   - engine: ``open_engine(LLMSettings(base_url=..., max_concurrency=C))`` with a fresh
     cache (so every request is sent, and results are written to the cache as in real use);
   - engine_openai: the same engine with ``transport="openai"`` (requests go through
     ``openai.AsyncOpenAI`` + ``DefaultAioHttpClient``; ``builder/llm/transport_openai.py``);
   - baseline: ``AsyncOpenAI()`` with its defaults, ``asyncio.gather`` under a semaphore;
   - openai_aiohttp: the same with ``http_client=DefaultAioHttpClient()`` (the SDK's cheaper
     transport; it shows why the engine speaks HTTP itself).
   Each client runs in its own child process (and session); client CPU is that process's
   user+system time (``resource.getrusage``), all threads included. Ideal time at latency
   L and concurrency C for N requests is ``ceil(N / C) * L``; "% of ideal" is ideal time /
   measured time.
   Runs: 1 s latency at C=256 and C=1,024, and zero latency (pure client overhead).
2. Tokens/s of the engine on the embedded llama.cpp server vs ``llama_cpp.Llama`` in-process
   on the same prompts, threads and sampling parameters (and the same outputs).
3. Under 429s (``--only-429`` runs just these): the engine and ``AsyncOpenAI`` behind a
   semaphore (its own retries, ``max_retries=5``), C=256, 1 s latency, max_tokens 600, each on
   a fresh fake server process: no fault (the reference), sporadic 5% 429 with
   ``Retry-After: 1`` (answered at once, whatever the load), a server limit of 64 concurrent
   requests (429 above it), and the fault mix (5% 429, 5% 500, 1% reset, 1% malformed, 0.4%
   answers that hang 20 s). Figures: wall time, requests/s, % of the no-fault throughput,
   429s the server sent, ids answered exactly once.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = "Explain the difference between a limit and a derivative in two sentences. " * 4


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- workers (each in its own process) -------------------------------------------------------
def worker_engine_429(base_url: str, n: int, c: int) -> dict:
    """The engine as ``corpus llm run`` uses it, for the 429 scenarios: every id counted."""
    from collections import Counter

    from builder.llm import open_engine
    from builder.records import ChatRequest
    from builder.settings.llm import LLMSettings

    settings = LLMSettings(base_url=base_url, model="fake-model", max_concurrency=c)
    requests = (
        ChatRequest(
            id=f"r{i}",
            messages=({"role": "user", "content": f"{PROMPT} #{i}"},),
            params={"max_tokens": 600},
        )
        for i in range(n)
    )
    ids: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as cache:
        with open_engine(settings, cache_dir=cache, progress=False) as engine:
            cpu0, t0 = _cpu(), time.perf_counter()
            ok = 0
            for r in engine.run(requests):
                ids[r.request_id] += 1
                ok += r.ok
            wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
            window = engine.limiters[0].controller
            extra = {
                "window_final": window.window,
                "window_peak": window.peak,
                "cuts": window.cuts,
                "background_429": round(window.background, 4),
                "refused_seen": window.refused_total,
                "reason": window.reason,
            }
    once = len(ids) == n and all(v == 1 for v in ids.values())
    return {"ok": ok, "wall_s": wall, "cpu_s": cpu, "exactly_once": once, **extra}


def worker_baseline_429(base_url: str, n: int, c: int) -> dict:
    """``AsyncOpenAI`` behind a semaphore with its own retries (5; it honours Retry-After)."""
    from collections import Counter

    from openai import AsyncOpenAI

    async def main() -> dict:
        client = AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=5)
        sem = asyncio.Semaphore(c)
        ids: Counter[str] = Counter()

        async def one(i: int) -> bool:
            async with sem:
                r = await client.chat.completions.create(
                    model="fake-model",
                    messages=[{"role": "user", "content": f"{PROMPT} #{i}"}],
                    max_tokens=600,
                    seed=0,
                )
                ids[f"r{i}"] += 1
                return bool(r.choices[0].message.content)

        cpu0, t0 = _cpu(), time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
        wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
        await client.close()
        ok = sum(r is True for r in results)
        return {"ok": ok, "wall_s": wall, "cpu_s": cpu, "exactly_once": ok == n}

    return asyncio.run(main())


def worker_engine(base_url: str, n: int, c: int, transport: str = "aiohttp") -> dict:
    from builder.llm import open_engine
    from builder.records import ChatRequest
    from builder.settings.llm import LLMSettings

    settings = LLMSettings(
        base_url=base_url,
        model="fake-model",
        max_concurrency=c,
        read_timeout_s=60,
        transport=transport,
    )
    requests = (
        ChatRequest(id=f"r{i}", messages=({"role": "user", "content": f"{PROMPT} #{i}"},))
        for i in range(n)
    )
    with tempfile.TemporaryDirectory() as cache:
        with open_engine(settings, cache_dir=cache, progress=False) as engine:
            cpu0, t0 = _cpu(), time.perf_counter()
            ok = sum(r.ok for r in engine.run(requests))
            wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    return {"ok": ok, "wall_s": wall, "cpu_s": cpu}


def worker_baseline(base_url: str, n: int, c: int, aiohttp_transport: bool = False) -> dict:
    from openai import AsyncOpenAI, DefaultAioHttpClient

    async def main() -> tuple[int, float, float]:
        if aiohttp_transport:
            client = AsyncOpenAI(
                base_url=base_url, api_key="bench", http_client=DefaultAioHttpClient()
            )
        else:
            client = AsyncOpenAI(base_url=base_url, api_key="bench")
        sem = asyncio.Semaphore(c)

        async def one(i: int) -> bool:
            async with sem:
                r = await client.chat.completions.create(
                    model="fake-model",
                    messages=[{"role": "user", "content": f"{PROMPT} #{i}"}],
                    temperature=0.7,
                    top_p=1.0,
                    max_tokens=1024,
                    seed=0,
                )
                return bool(r.choices[0].message.content)

        cpu0, t0 = _cpu(), time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
        wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
        await client.close()
        return sum(r is True for r in results), wall, cpu

    ok, wall, cpu = asyncio.run(main())
    return {"ok": ok, "wall_s": wall, "cpu_s": cpu}


def _prompts(k: int) -> list[str]:
    topics = [
        "photosynthesis",
        "prime numbers",
        "the water cycle",
        "Newton's laws",
        "recursion",
        "supply and demand",
        "plate tectonics",
        "the French Revolution",
    ]
    return [f"Write a short paragraph for students about {t}." for t in topics[:k]]


SAMPLING = {"temperature": 0.7, "top_p": 1.0, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.0}


def worker_inprocess(k: int, max_tokens: int) -> dict:
    """``llama_cpp.Llama`` in this process. Generation runs in a worker thread, as in the
    server: on an oversubscribed machine, llama.cpp's OpenMP threads driven from Python's
    main thread were measured 5-10x slower than from a worker thread (spin-waiting), which
    would flatter the server."""
    import threading

    from llama_cpp import Llama

    from builder.llm.embedded import find_gguf

    threads = os.cpu_count() or 1
    llm = Llama(
        model_path=str(find_gguf()),
        n_ctx=2048,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    out: dict = {}

    def generate() -> None:
        llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        texts, tokens = [], 0
        t0 = time.perf_counter()
        for i, p in enumerate(_prompts(k)):
            r = llm.create_chat_completion(
                messages=[{"role": "user", "content": p}],
                max_tokens=max_tokens,
                seed=100 + i,
                **SAMPLING,
            )
            texts.append(r["choices"][0]["message"]["content"])
            tokens += r["usage"]["completion_tokens"]
        out.update(tokens=tokens, wall_s=time.perf_counter() - t0, texts=texts, threads=threads)

    worker = threading.Thread(target=generate)
    worker.start()
    worker.join()
    return out


def worker_embedded(k: int, max_tokens: int) -> dict:
    from builder.llm import open_engine
    from builder.records import ChatRequest
    from builder.settings.llm import LLMSettings

    settings = LLMSettings(
        max_tokens=max_tokens,
        temperature=SAMPLING["temperature"],
        top_p=SAMPLING["top_p"],
        top_k=SAMPLING["top_k"],
        min_p=SAMPLING["min_p"],
        repeat_penalty=SAMPLING["repeat_penalty"],
    )
    requests = [
        ChatRequest(id=str(i), messages=({"role": "user", "content": p},), params={"seed": 100 + i})
        for i, p in enumerate(_prompts(k))
    ]
    with tempfile.TemporaryDirectory() as cache:
        with open_engine(settings, cache_dir=cache, progress=False) as engine:
            engine.complete(
                ChatRequest(
                    id="warm",
                    messages=({"role": "user", "content": "Hi"},),
                    params={"max_tokens": 4},
                )
            )
            t0 = time.perf_counter()
            results = {r.request_id: r for r in engine.run(requests)}
            wall = time.perf_counter() - t0
    texts = [results[str(i)].text for i in range(k)]
    tokens = sum(r.completion_tokens for r in results.values())
    return {"tokens": tokens, "wall_s": wall, "texts": texts}


def worker_openai_aiohttp(base_url: str, n: int, c: int) -> dict:
    return worker_baseline(base_url, n, c, aiohttp_transport=True)


def worker_engine_openai(base_url: str, n: int, c: int) -> dict:
    return worker_engine(base_url, n, c, transport="openai")


#: throughput clients, in the order they run
CLIENTS = ("engine", "engine_openai", "baseline", "openai_aiohttp")
CLIENTS_429 = ("engine_429", "baseline_429")

WORKERS = {
    "engine": worker_engine,
    "engine_openai": worker_engine_openai,
    "engine_429": worker_engine_429,
    "baseline_429": worker_baseline_429,
    "baseline": worker_baseline,
    "openai_aiohttp": worker_openai_aiohttp,
    "inprocess": worker_inprocess,
    "embedded": worker_embedded,
}


# -- driver ------------------------------------------------------------------------------------
def _child(kind: str, *args: object) -> dict:
    # Every benchmark process gets its own session: with Linux autogroup scheduling, CPU is
    # shared fairly between sessions, so other users of a shared machine weigh on each of our
    # processes alike (the embedded server, like any server the engine starts, runs in its
    # own session too; an in-process run in the caller's session would be handicapped).
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # what the engine gives its embedded server
    out = subprocess.run(
        [sys.executable, __file__, "--worker", kind, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,
        env=env,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{kind} worker failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


class FakeServer:
    def __init__(self, latency: float, *flags: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tests" / "support" / "fake_openai_server.py"),
                "--latency",
                str(latency),
                *flags,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{int(line.split()[1])}/v1"

    def stats(self) -> dict:
        import urllib.request

        with urllib.request.urlopen(f"{self.base_url}/_stats", timeout=10) as resp:
            return json.loads(resp.read())["counts"]

    def close(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.wait(timeout=30)


#: name -> (requests, fake server flags)
SCENARIOS_429 = {
    "no_fault": (5120, ()),
    "sporadic": (5120, ("--sporadic-429", "0.05", "--retry-after", "1")),
    "limit64": (1000, ("--max-inflight", "64", "--retry-after", "1")),
    "mix": (2000, ("--fault-mix", "--retry-after", "1", "--hang-s", "20")),
}


def under_429s(c: int = 256, only: set[str] | None = None) -> dict:
    """Each scenario on a fresh server, each client in turn; figures for the JSON line."""
    figures: dict = {}
    rows: dict = {}
    for name, (n, flags) in SCENARIOS_429.items():
        if only and name not in only:
            continue
        for kind in CLIENTS_429:
            srv = FakeServer(1.0, *flags)
            try:
                r = _child(kind, srv.base_url, n, c)
                counts = srv.stats()
            finally:
                srv.close()
            r.update(
                n=n,
                req_per_s=round(n / r["wall_s"], 1),
                sent=counts.get("chat", 0),
                answered_429=counts.get("429", 0),
                cpu_ms_per_req=round(1000 * r["cpu_s"] / n, 3),
            )
            r["pct_429"] = round(100 * r["answered_429"] / n, 1)
            rows[(name, kind)] = r
            print(
                f"{name:9s} {kind:13s} N={n}: {r['wall_s']:.1f}s ({r['req_per_s']} req/s), "
                f"ok={r['ok']}, once={r['exactly_once']}, 429s={r['answered_429']} "
                f"({r['pct_429']}% of requests), sent={r['sent']}"
                + (
                    f", window {r['window_final']} (peak {r['window_peak']}, cuts {r['cuts']}, "
                    f"background {r['background_429']}): {r['reason']}"
                    if "window_final" in r
                    else ""
                ),
                flush=True,
            )
            short = kind.removesuffix("_429")
            for key in ("wall_s", "req_per_s", "ok", "exactly_once", "answered_429", "pct_429"):
                figures[f"{name}_{short}_{key}"] = (
                    round(r[key], 2) if isinstance(r[key], float) else r[key]
                )
            if "window_final" in r:
                figures[f"{name}_{short}_window_final"] = r["window_final"]
    for short in ("engine", "baseline"):
        if f"sporadic_{short}_req_per_s" in figures and f"no_fault_{short}_req_per_s" in figures:
            figures[f"sporadic_{short}_pct_of_no_fault"] = round(
                100
                * figures[f"sporadic_{short}_req_per_s"]
                / figures[f"no_fault_{short}_req_per_s"],
                1,
            )
        if f"limit64_{short}_req_per_s" in figures:
            figures[f"limit64_{short}_pct_of_64_per_s"] = round(
                100 * figures[f"limit64_{short}_req_per_s"] / 64, 1
            )
    return figures


def throughput(kind: str, srv: FakeServer, n: int, c: int, latency: float) -> dict:
    r = _child(kind, srv.base_url, n, c)
    ideal = math.ceil(n / c) * latency if latency else None
    r.update(
        n=n,
        c=c,
        latency_s=latency,
        pct_ideal=round(100 * ideal / r["wall_s"], 1) if ideal else None,
        cpu_ms_per_req=round(1000 * r["cpu_s"] / n, 3),
        req_per_s=round(n / r["wall_s"], 1),
    )
    print(
        f"{kind:14s} latency={latency:g}s C={c:5d} N={n:5d}: {r['wall_s']:.2f}s "
        f"({r['req_per_s']} req/s, {r['pct_ideal']}% of ideal), "
        f"{r['cpu_ms_per_req']} ms CPU/req, ok={r['ok']}",
        flush=True,
    )
    return r


def embedded_vs_inprocess(rounds: int, k: int = 4, max_tokens: int = 48) -> dict:
    """Alternate in-process and embedded runs (same prompts, seeds, sampling, threads and
    environment); the machine is shared, so the figure is the median per-round ratio."""
    tin, temb, same = [], [], True
    for _ in range(rounds):
        inproc = _child("inprocess", k, max_tokens)
        emb = _child("embedded", k, max_tokens)
        tin.append(inproc["tokens"] / inproc["wall_s"])
        temb.append(emb["tokens"] / emb["wall_s"])
        same = same and inproc["texts"] == emb["texts"]
        print(
            f"in-process {tin[-1]:.1f} tok/s, embedded via engine {temb[-1]:.1f} tok/s "
            f"({inproc['tokens']} / {emb['tokens']} tokens, {inproc['threads']} threads)",
            flush=True,
        )
    ratios = sorted(100 * e / i for i, e in zip(tin, temb, strict=True))
    return {
        "inprocess_tokens_per_s": round(max(tin), 1),
        "embedded_tokens_per_s": round(max(temb), 1),
        # paired rounds cancel the machine's load drift: the median round is the figure
        "embedded_pct_of_inprocess": round(ratios[len(ratios) // 2], 1),
        "embedded_pct_of_inprocess_rounds": [round(r, 1) for r in ratios],
        "embedded_pct_of_inprocess_best_vs_best": round(100 * max(temb) / max(tin), 1),
        "embedded_same_outputs": same,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", nargs="+")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-embedded", action="store_true")
    parser.add_argument("--only-embedded", action="store_true")
    parser.add_argument("--only-429", action="store_true")
    parser.add_argument("--no-429", action="store_true")
    parser.add_argument("--scenarios", help="comma-separated 429 scenarios to run")
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind in CLIENTS or kind in CLIENTS_429:
            result = WORKERS[kind](rest[0], int(rest[1]), int(rest[2]))
        else:
            result = WORKERS[kind](int(rest[0]), int(rest[1]))
        print(json.dumps(result))
        return

    q = args.quick
    if args.only_429:
        only = set(args.scenarios.split(",")) if args.scenarios else None
        load_before = os.getloadavg()[0]
        figures = under_429s(only=only)
        print(
            json.dumps(
                {"load_avg_before": load_before, **figures, "load_avg_after": os.getloadavg()[0]}
            )
        )
        return
    if args.only_embedded:
        print(json.dumps({"load_avg_before": os.getloadavg()[0], **embedded_vs_inprocess(5)}))
        return
    n256, n1024, n0 = (1280, 2048, 1000) if q else (2560, 5120, 3000)
    figures: dict = {"cpu_count": os.cpu_count(), "load_avg_before": os.getloadavg()[0]}
    slow, fast = FakeServer(1.0), FakeServer(0.0)
    try:
        for kind in CLIENTS:
            r256 = throughput(kind, slow, n256, 256, 1.0)
            r1024 = throughput(kind, slow, n1024, 1024, 1.0)
            r0 = throughput(kind, fast, n0, 64, 0.0)
            figures[f"{kind}_pct_ideal_c256"] = r256["pct_ideal"]
            figures[f"{kind}_pct_ideal_c1024"] = r1024["pct_ideal"]
            figures[f"{kind}_cpu_ms_per_req"] = r0["cpu_ms_per_req"]
            figures[f"{kind}_cpu_ms_per_req_c256"] = r256["cpu_ms_per_req"]
            figures[f"{kind}_cpu_ms_per_req_c1024"] = r1024["cpu_ms_per_req"]
            figures[f"{kind}_zero_latency_req_per_s"] = r0["req_per_s"]
            figures[f"{kind}_ok"] = r256["ok"] + r1024["ok"] + r0["ok"]
    finally:
        slow.close()
        fast.close()
    if not q and not args.no_429:
        figures.update(under_429s())
    if not q and not args.no_embedded:
        figures.update(embedded_vs_inprocess(rounds=5))
    figures["load_avg_after"] = os.getloadavg()[0]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
