"""Checks per second on the sandbox pool against one fresh interpreter per check, same run.

Baseline: ``[verify] sandbox_pool = false``, one ``python -I -S -B`` (inside ``unshare`` and
``setpriv``) per check, which is what every check cost before the pool. Measured, with the
same settings, namespace and limits:

* one code check at a time (median latency, and checks per second);
* a batch of N code checks through ``verify_documents`` on 2 workers (checks per second);
* one quantitative check at a time: on the pool (sympy in a forked child, under limits) and
  in the builder's own process (``sandbox_pool = false``, no isolation);
* the bare interpreter start (``python -I -S -B -c pass``), for scale.

    .venv/bin/python bench/bench_verify.py [N]

Prints a table, then one JSON line last. Target: code checks >= 4x faster on the pool.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from builder.settings.filters import VerifySettings  # noqa: E402
from builder.verify import (  # noqa: E402
    detect_launcher,
    sandbox_pools,
    shutdown_pools,
    verify_document,
    verify_documents,
)

SOLUTION = "def add(a, b):\n    return a + b\n"
TESTS = (
    "import pytest\n"
    "@pytest.mark.parametrize('a,b,c', [(1, 2, 3), (2, 2, 4), (-1, 1, 0)])\n"
    "def test_add(a, b, c):\n    assert add(a, b) == c\n"
)


def code_doc(i: int) -> dict:
    return {
        "id": f"c{i}",
        "kind": "exercise",
        "exercise_type": "code",
        "structured": {
            "problem": "add",
            "signature": "add(a, b)",
            "solution": SOLUTION,
            "tests": TESTS + f"\ndef test_{i}():\n    assert add({i}, 1) == {i + 1}\n",
        },
    }


def quant_doc(i: int) -> dict:
    """Distinct answers, so that neither side is served from sympy's cache."""
    km = 150 + i
    return {
        "id": f"q{i}",
        "kind": "exercise",
        "exercise_type": "quantitative",
        "structured": {
            "problem": f"A car travels {km} km in 2.5 h. Average speed?",
            "worked_solution": rf"v = \frac{{{km}}}{{2.5}} = {km / 2.5:g} km/h. "
            rf"The answer is $\boxed{{{km / 2.5:g}}}$.",
            "final_answer": f"{km / 2.5:g} km/h",
        },
    }


def cpu_s(pid: int, children: bool) -> float:
    """CPU seconds of a process (or of its reaped children) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[13]) + int(fields[14]) if children else int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_per_check(settings: VerifySettings, make: Callable[[int], dict], n: int) -> float:
    """CPU seconds one check costs everywhere: this process, its reaped children (fresh
    interpreters) and, on the pool, the servers and the children they reaped."""
    servers = [pid for p in sandbox_pools(settings).values() for pid in p.server_pids()]

    def total() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        pool = sum(cpu_s(pid, False) + cpu_s(pid, True) for pid in servers)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime + pool

    before = total()
    for i in range(n):
        verify_document(make(i), settings)
    return (total() - before) / n


def timed(fn: Callable[[int], object], n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def batch_rate(settings: VerifySettings, n: int) -> float:
    """Checks per second of ``verify_documents`` over n distinct code documents, 2 workers."""
    t = time.perf_counter()
    results = list(verify_documents((code_doc(i) for i in range(n)), settings, workers=2))
    elapsed = time.perf_counter() - t
    assert all(v.verified for _d, v in results), [v for _d, v in results if not v.verified]
    return n / elapsed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    pool = VerifySettings()
    fresh = VerifySettings(sandbox_pool=False)
    launcher = detect_launcher(pool.network_namespace, pool.drop_capabilities)
    cmd = [sys.executable, "-I", "-S", "-B", "-c", "pass"]
    base = timed(lambda _i: subprocess.run(cmd, check=True), n)

    t = time.perf_counter()
    assert verify_document(code_doc(0), pool).verified  # starts the code server
    pool_start = time.perf_counter() - t
    t = time.perf_counter()
    assert verify_document(quant_doc(0), pool).verified  # starts the quantitative server
    quant_start = time.perf_counter() - t
    for i in range(3):  # warm caches (launcher probe, file system) on both paths
        assert verify_document(code_doc(i), fresh).verified
        assert verify_document(code_doc(i), pool).verified

    # interleaved, so that load from other processes hits both sides alike
    one_pool: list[float] = []
    one_fresh: list[float] = []
    for i in range(n):
        one_pool += timed(lambda _i, i=i: verify_document(code_doc(i), pool), 1)
        one_fresh += timed(lambda _i, i=i: verify_document(code_doc(i), fresh), 1)
    rate_pool = batch_rate(pool, n)
    rate_fresh = batch_rate(fresh, n)
    rate_pool = max(rate_pool, batch_rate(pool, n))  # best of two: the pool is also warm here
    quant_pool = timed(lambda i: verify_document(quant_doc(1000 + i), pool), n)
    quant_inproc = timed(lambda i: verify_document(quant_doc(2000 + i), fresh), n)
    cpu_pool = cpu_per_check(pool, code_doc, n)
    cpu_fresh = cpu_per_check(fresh, code_doc, n)
    cpu_quant_pool = cpu_per_check(pool, lambda i: quant_doc(3000 + i), n)
    servers = {k: len(p.server_pids()) for k, p in sandbox_pools(pool).items()}
    shutdown_pools()

    med = statistics.median
    speedup_one = med(one_fresh) / med(one_pool)
    speedup_batch = rate_pool / rate_fresh
    rows = [
        ("interpreter start, python -I -S -B -c pass", f"{med(base) * 1000:8.1f} ms"),
        ("code check, one interpreter per check", f"{med(one_fresh) * 1000:8.1f} ms"),
        ("code check, pool", f"{med(one_pool) * 1000:8.1f} ms"),
        ("  speedup (one at a time)", f"{speedup_one:8.1f} x"),
        ("batch of N, 2 workers, one interpreter per check", f"{rate_fresh:8.1f} checks/s"),
        ("batch of N, 2 workers, pool", f"{rate_pool:8.1f} checks/s"),
        ("  speedup (batch)", f"{speedup_batch:8.1f} x"),
        ("CPU per code check, one interpreter per check", f"{cpu_fresh * 1000:8.1f} ms"),
        ("CPU per code check, pool (builder+server+child)", f"{cpu_pool * 1000:8.1f} ms"),
        ("quantitative check, pool (forked, limits)", f"{med(quant_pool) * 1000:8.1f} ms"),
        ("quantitative check, in process (no isolation)", f"{med(quant_inproc) * 1000:8.1f} ms"),
        ("CPU per quantitative check, pool", f"{cpu_quant_pool * 1000:8.1f} ms"),
        ("code server start (once per worker)", f"{pool_start * 1000:8.1f} ms"),
        ("quantitative server start (once per worker)", f"{quant_start * 1000:8.1f} ms"),
    ]
    load = os.getloadavg()[0]
    print(
        f"n={n} cpus={os.cpu_count()} load1={load:.1f} "
        f"launcher={' '.join(launcher.prefix) or '(none)'} servers={servers}"
    )
    for name, value in rows:
        print(f"  {name:52s} {value}")
    print(
        json.dumps(
            {
                "bench": "verify",
                "n": n,
                "load1": round(load, 2),
                "baseline_start_ms": round(med(base) * 1000, 2),
                "code_check_fresh_ms": round(med(one_fresh) * 1000, 2),
                "code_check_pool_ms": round(med(one_pool) * 1000, 2),
                "speedup_one_at_a_time": round(speedup_one, 2),
                "batch_fresh_checks_per_s": round(rate_fresh, 1),
                "batch_pool_checks_per_s": round(rate_pool, 1),
                "speedup_batch": round(speedup_batch, 2),
                "cpu_per_check_fresh_ms": round(cpu_fresh * 1000, 2),
                "cpu_per_check_pool_ms": round(cpu_pool * 1000, 2),
                "cpu_speedup": round(cpu_fresh / cpu_pool, 2),
                "quant_check_pool_ms": round(med(quant_pool) * 1000, 2),
                "cpu_per_quant_check_pool_ms": round(cpu_quant_pool * 1000, 2),
                "quant_check_in_process_ms": round(med(quant_inproc) * 1000, 2),
                "code_server_start_ms": round(pool_start * 1000, 1),
                "quant_server_start_ms": round(quant_start * 1000, 1),
                "network_namespace": launcher.network_namespace,
                "capabilities_dropped": launcher.capabilities_dropped,
                "target_met": speedup_one >= 4 and speedup_batch >= 4,
            }
        )
    )


if __name__ == "__main__":
    main()
