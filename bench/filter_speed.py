"""Filter stage throughput without code verification: this code against wave 1's filters.

Runs ``builder.filters.filter_documents`` on the same synthetic English sections (~220
words drawn from the starter taxonomy's vocabulary, seeded) with the current module and
with the wave-1 module loaded from git (commit ``BASELINE``: langdetect, a token count of
every document, one regex scan per refusal pattern), one process, one core, warm.
Prints one JSON line last: docs, docs_per_s (current), baseline_docs_per_s, speedup.

    python bench/filter_speed.py --docs 5000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builder.settings.filters import FilterSettings, VerifySettings  # noqa: E402

BASELINE = "f1e09ef"  # end of wave 1


def documents(n: int) -> list[dict]:
    text = " ".join(p.read_text(encoding="utf-8") for p in (ROOT / "taxonomy").glob("*.yaml"))
    words = sorted(set(re.findall(r"[a-z]{3,}", text.lower())))
    rows = []
    for i in range(n):
        r = random.Random(i)
        sentences = [
            " ".join(r.choice(words) for _ in range(r.randint(8, 16))).capitalize() + "."
            for _ in range(18)
        ]
        rows.append({"id": str(i), "text": " ".join(sentences), "kind": "section", "status": "ok"})
    return rows


def baseline_module():
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{BASELINE}:builder/filters.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "filters_wave1.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("filters_wave1", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rate(module, rows: list[dict]) -> tuple[float, int]:
    fs, vs = FilterSettings(), VerifySettings(enabled=False)
    module.filter_documents(rows[:50], fs, vs)  # warm: imports, compiled patterns
    t0 = time.process_time()
    kept, _rejected = module.filter_documents(rows, fs, vs)
    return len(rows) / (time.process_time() - t0), len(kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=5000)
    args = parser.parse_args()
    rows = documents(args.docs)
    import builder.filters as current

    now, kept_now = rate(current, rows)
    base_rows = rows[: max(200, args.docs // 10)]  # the baseline is slow: a sample
    before, kept_before = rate(baseline_module(), base_rows)
    print(f"current:  {now:,.0f} docs/s per core ({kept_now}/{len(rows)} kept)")
    print(f"wave 1:   {before:,.0f} docs/s per core ({kept_before}/{len(base_rows)} kept)")
    print(
        json.dumps(
            {
                "docs": len(rows),
                "docs_per_s": round(now),
                "baseline_docs_per_s": round(before),
                "speedup": round(now / before, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
