"""Benchmark: load + validate a generated 100,000-node taxonomy, then walk it.

Baseline, in the same run: ruamel.yaml's own safe loader on the same files (C parser when
ruamel.yaml.clib is installed), which builds plain dicts without line numbers and without
any validation. ``load_taxonomy`` must do more (lines, checks, Node records) in less time.

The walker's first unit is timed against its baseline in the same run, one whole round
(every one of the ~99,000 leaves once): laziness means the first costs a small fraction.
The 1-minute load average is printed too: the machine is shared, and absolute times move
with it (see bench/RESULTS.md).

    .venv/bin/python bench/taxonomy_load.py [--nodes 100000] [--repeat 3]

Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from builder.taxonomy import load_taxonomy  # noqa: E402
from builder.taxonomy.parse import fast_parser_available  # noqa: E402


def generate(root: Path, nodes: int) -> int:
    """10 disciplines x 10 subjects x N topics, block style, with descriptions and prerequisites."""
    per_subject = max(1, -(-(nodes - 110) // 100))  # ceil: at least `nodes` nodes
    count = 0
    for d in range(10):
        lines = [f"# discipline {d}", f"id: d{d}", f"name: Discipline {d}", "level: discipline"]
        lines.append("children:")
        count += 1
        for s in range(10):
            lines += [f"  - id: d{d}-s{s}", f"    name: Subject {d}.{s}", "    level: subject"]
            lines.append("    children:")
            count += 1
            for t in range(per_subject):
                lines += [
                    f"      - id: d{d}-s{s}-t{t}",
                    f"        name: Topic {d}.{s}.{t}",
                    "        level: topic",
                    f"        description: What topic {t} of subject {s} covers.",
                ]
                if t % 10 == 5:
                    lines.append(f"        prerequisites: [d{d}-s{s}-t{t - 1}]")
                count += 1
        (root / f"d{d}.yaml").write_text("\n".join(lines) + "\n")
    return count


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from ruamel.yaml import YAML

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n = generate(root, args.nodes)
        files = sorted(root.glob("*.yaml"))

        def baseline() -> None:
            y = YAML(typ="safe")
            for f in files:
                y.load(f.read_text())

        tax_holder: list = []

        def ours() -> None:
            tax_holder[:] = [load_taxonomy(root)]

        base_s = best_of(args.repeat, baseline)
        ours_s = best_of(args.repeat, ours)
        tax = tax_holder[0]
        assert len(tax) == n
        graph_s = best_of(1, lambda: tax.graph)
        order_s = best_of(1, tax.curriculum_order)
        from builder.walk import walk_topics

        first_s = best_of(args.repeat, lambda: next(iter(walk_topics(tax, seed=1))))
        round_s = best_of(1, lambda: sum(1 for _ in walk_topics(tax, seed=1)))
    result = {
        "bench": "taxonomy_load",
        "nodes": n,
        "c_parser": fast_parser_available(),
        "baseline_ruamel_safe_load_s": round(base_s, 3),
        "load_taxonomy_s": round(ours_s, 3),
        "speedup": round(base_s / ours_s, 2),
        "graph_build_s": round(graph_s, 3),
        "curriculum_order_s": round(order_s, 3),
        "walk_first_unit_s": round(first_s, 3),
        "walk_one_round_s": round(round_s, 3),
        "first_unit_share_of_round": round(first_s / round_s, 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
