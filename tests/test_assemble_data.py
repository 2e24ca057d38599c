"""Synthetic corpus rows and a small taxonomy for the assembly, card and report tests.

Holds no tests itself; ``test_assemble.py``, ``test_card.py`` and ``test_report.py`` import it.
The taxonomy object is duck-typed like ``builder.taxonomy.Taxonomy`` (iterable of nodes with
id, name, parent, weight, status; ``tax[id]``), which is all the report and card use.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from builder.records import sha256_hex


@dataclass(frozen=True)
class FakeNode:
    id: str
    name: str
    parent: str | None
    weight: float = 1.0
    status: str = "approved"


class FakeTaxonomy:
    def __init__(self, nodes: list[FakeNode]) -> None:
        self._nodes = {n.id: n for n in nodes}

    def __iter__(self):
        return iter(self._nodes.values())

    def __getitem__(self, node_id: str) -> FakeNode:
        return self._nodes[node_id]

    def __len__(self) -> int:
        return len(self._nodes)


TREE: dict[str, tuple[str, dict[str, tuple[str, list[tuple[str, str]]]]]] = {
    "mathematics": (
        "Mathematics",
        {
            "calculus": (
                "Calculus",
                [
                    ("limits", "Limits and continuity"),
                    ("derivatives", "Derivatives"),
                    ("integrals", "Integrals"),
                    ("series", "Infinite series"),
                ],
            ),
            "linear-algebra": (
                "Linear algebra",
                [
                    ("vectors", "Vectors"),
                    ("matrices", "Matrices"),
                    ("eigenvalues", "Eigenvalues and eigenvectors"),
                ],
            ),
        },
    ),
    "physics": (
        "Physics",
        {
            "mechanics": (
                "Classical mechanics",
                [
                    ("kinematics", "Kinematics"),
                    ("newtons-laws", "Newton's laws"),
                    ("energy", "Work and energy"),
                ],
            ),
            "thermodynamics": (
                "Thermodynamics",
                [("heat", "Heat and temperature"), ("entropy", "Entropy")],
            ),
        },
    ),
    "computer-science": (
        "Computer science",
        {
            "algorithms": (
                "Algorithms",
                [
                    ("sorting", "Sorting"),
                    ("graphs", "Graph algorithms"),
                    ("dynamic-programming", "Dynamic programming"),
                ],
            ),
        },
    ),
}

#: Topics that get no documents (coverage gaps the report must show).
EMPTY_TOPICS = {"series", "entropy"}

OPENERS = [
    "In this section we",
    "Welcome to our chapter on",
    "Let us explore the idea of",
    "Imagine you are",
]

WORDS = (
    "the a of and to in is that for it as with on by this we an be are from at which "
    "function limit value rate change force energy system matrix vector node graph sort "
    "heat entropy derivative integral series proof example theorem define compute show "
    "consider equation solution step result because therefore however notice observe"
).split()


def taxonomy(weights: dict[str, float] | None = None) -> FakeTaxonomy:
    weights = weights or {}
    nodes = []
    for d, (dname, subjects) in TREE.items():
        nodes.append(FakeNode(d, dname, None, weights.get(d, 1.0)))
        for s, (sname, topics) in subjects.items():
            nodes.append(FakeNode(s, sname, d, weights.get(s, 1.0)))
            for t, tname in topics:
                nodes.append(FakeNode(t, tname, s, weights.get(t, 1.0)))
    nodes.append(FakeNode("quantum", "Quantum mechanics", "physics", status="proposed"))
    return FakeTaxonomy(nodes)


def topics() -> list[tuple[str, str, str]]:
    out = []
    for d, (_, subjects) in TREE.items():
        for s, (_, ts) in subjects.items():
            for t, _ in ts:
                out.append((d, s, t))
    return out


def make_text(rng: random.Random, words: int) -> str:
    opener = rng.choice(OPENERS) if rng.random() < 0.6 else " ".join(rng.sample(WORDS, 4))
    body = " ".join(rng.choice(WORDS) for _ in range(words))
    return f"{opener} {body}.\n\nExample: ∫ x² dx = x³/3 + C — note the café-style unicode."


def make_rows(n: int, seed: int = 0, *, words: tuple[int, int] = (40, 400)) -> list[dict[str, Any]]:
    """``n`` document rows (DESIGN.md columns plus an extra ``structured`` dict), in random
    order, across every topic except ``EMPTY_TOPICS``."""
    rng = random.Random(seed)
    units = [u for u in topics() if u[2] not in EMPTY_TOPICS]
    rows = []
    for i in range(n):
        d, s, t = units[i % len(units)]
        kind = rng.choice(["section", "section", "exercise", "solution"])
        text = make_text(rng, rng.randint(*words))
        rows.append(
            {
                "id": sha256_hex({"i": i, "seed": seed})[:24],
                "text": text,
                "kind": kind,
                "discipline": d,
                "subject": s,
                "topic": t,
                "taxonomy_path": f"{d}/{s}/{t}",
                "session": f"session-{i % 3 + 1}",
                "concepts": [f"concept-{i % 5}", f"concept-{i % 7}"],
                "audience": rng.choice(["high school", "undergraduate"]),
                "style": rng.choice(["textbook", "lecture"]),
                "difficulty": "intermediate",
                "template": f"{kind}.j2",
                "template_sha256": sha256_hex(kind),
                "model": "SmolLM2-135M-Instruct.Q4_1.gguf",
                "seed": i,
                "request_sha256": sha256_hex({"r": i}),
                "finish_reason": "stop",
                "prompt_tokens": 100 + i % 17,
                "completion_tokens": 200 + i % 31,
                "n_tokens": 0,  # assembly recounts
                "verified": None if kind == "section" else (i % 4 != 0),
                "dup_cluster": None,
                "created_at": f"2025-03-0{1 + i % 9}T12:{i % 60:02d}:00Z",
                "structured": {"question": f"q{i}", "answer": i} if kind == "exercise" else None,
            }
        )
    rng.shuffle(rows)
    return rows


def make_rejected(rows: list[dict[str, Any]], n: int, seed: int = 1) -> list[dict[str, Any]]:
    """``n`` rejected rows at filter, verify, dedup and decontam stages (new ids)."""
    rng = random.Random(seed)
    stages = [
        ("filter", "too_short"),
        ("filter", "refusal"),
        ("filter", "truncated"),
        ("verify", "wrong_answer"),
        ("dedup", "exact"),
        ("dedup", "near_duplicate"),
        ("decontam", "ngram_overlap"),
    ]
    out = []
    for i in range(n):
        base = rows[rng.randrange(len(rows))]
        stage, reason = rng.choice(stages)
        out.append(
            {
                "id": sha256_hex({"rej": i})[:24],
                "stage": stage,
                "reason": reason,
                "detail": None if i % 3 else f"detail {i}",
                "text": base["text"][:80],
                "discipline": base["discipline"],
                "subject": base["subject"],
                "topic": base["topic"],
                "taxonomy_path": base["taxonomy_path"],
                "model": base["model"],
            }
        )
    return out


STATS: dict[str, Any] = {
    "cost_usd": 0.0,
    "seconds": 42.5,
    "stages": {
        "syllabus": {"seconds": 1.2, "requests": 5, "cached": 5, "cost_usd": 0.0},
        "generate": {"seconds": 35.0, "requests": 400, "cached": 120, "cost_usd": 0.0},
        "filters": {"seconds": 0.4},
        "dedup": {"seconds": 2.1},
        "decontam": {"seconds": 1.5},
        "assemble": {"seconds": 0.8},
    },
    "dedup": {"exact_duplicates": 9, "near_duplicates": 12, "clusters": 10},
    "decontam": {"contaminated": 6, "benchmarks": ["gsm8k-test"]},
}


def make_config(overrides: dict[str, Any] | None = None):
    """A config from defaults plus ``{"section.key": value}`` overrides, ignoring any
    ``corpus.toml`` in the working directory (the tests must not depend on the demo's)."""
    from builder.config import CorpusConfig

    data: dict[str, dict[str, Any]] = {}
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        data.setdefault(section, {})[key] = value
    return CorpusConfig.model_validate(data)
