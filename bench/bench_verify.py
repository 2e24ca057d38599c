"""How long one verification takes, against the bare cost of starting the interpreter.

Baseline: ``python -I -S -B -c pass`` (what any subprocess-based check must pay). Measured:
one sandboxed code check (namespace + capability drop + limits + audit hook + tests), the
same with ``network_namespace="off"``, a batch on 2 workers, and one quantitative check.

    .venv/bin/python bench/bench_verify.py [N]

Prints a table, then one JSON line last.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from builder.settings.filters import VerifySettings  # noqa: E402
from builder.verify import detect_launcher, verify_document, verify_documents  # noqa: E402

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
            "tests": TESTS,
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


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    settings = VerifySettings()
    off = VerifySettings(network_namespace="off", drop_capabilities=False)
    launcher = detect_launcher(settings.network_namespace, settings.drop_capabilities)
    base = timed(
        lambda: subprocess.run([sys.executable, "-I", "-S", "-B", "-c", "pass"], check=True), n
    )
    for _ in range(3):  # warm caches (launcher probe, file system)
        verify_document(code_doc(0), settings)
    full = timed(lambda: verify_document(code_doc(0), settings), n)
    plain = timed(lambda: verify_document(code_doc(0), off), n)
    quant = timed(lambda: verify_document(QUANT, settings), n)
    t = time.perf_counter()
    results = list(verify_documents((code_doc(i) for i in range(n)), settings, workers=2))
    batch_per_doc = (time.perf_counter() - t) / n
    assert all(v.verified for _d, v in results)
    med = statistics.median
    rows = [
        ("interpreter start (baseline)", med(base)),
        ("code check, full sandbox", med(full)),
        ("code check, no namespace/caps", med(plain)),
        ("code check, batch of N on 2 workers (per doc)", batch_per_doc),
        ("quantitative check", med(quant)),
    ]
    print(f"n={n} cpus={os.cpu_count()} launcher={' '.join(launcher.prefix) or '(none)'}")
    for name, value in rows:
        print(f"  {name:48s} {value * 1000:8.1f} ms")
    print(
        json.dumps(
            {
                "bench": "verify",
                "n": n,
                "baseline_start_ms": round(med(base) * 1000, 2),
                "code_check_ms": round(med(full) * 1000, 2),
                "code_check_no_ns_ms": round(med(plain) * 1000, 2),
                "batch_2_workers_per_doc_ms": round(batch_per_doc * 1000, 2),
                "quant_check_ms": round(med(quant) * 1000, 2),
                "overhead_vs_baseline": round(med(full) / med(base), 2),
                "network_namespace": launcher.network_namespace,
                "capabilities_dropped": launcher.capabilities_dropped,
            }
        )
    )


if __name__ == "__main__":
    main()
