"""Synthetic corpus rows and a small taxonomy for the assembly, card and report tests.

Holds no tests itself; ``test_assemble.py``, ``test_card.py`` and ``test_report.py`` import it.
The taxonomy is a real ``builder.taxonomy.Taxonomy``, loaded from YAML files written from TREE.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any

from builder.records import sha256_hex
from builder.taxonomy import Taxonomy, load_taxonomy

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


def taxonomy_yaml(weights: dict[str, float] | None = None) -> dict[str, str]:
    """TREE as taxonomy files (discipline id -> YAML), with ``weights`` per node id and a
    proposed subject (``quantum``) under physics."""
    weights = weights or {}

    def weight(node_id: str) -> str:
        return f", weight: {weights[node_id]}" if node_id in weights else ""

    files = {}
    for d, (dname, subjects) in TREE.items():
        lines = [f"id: {d}", f"name: {dname}", "level: discipline"]
        if d in weights:
            lines.append(f"weight: {weights[d]}")
        lines.append("children:")
        for sid, (sname, topic_list) in subjects.items():
            lines.append(
                f"  - {{id: {sid}, name: {sname}, level: subject{weight(sid)}, children: ["
            )
            for t, tname in topic_list:
                lines.append(f'      {{id: {t}, name: "{tname}", level: topic{weight(t)}}},')
            lines.append("    ]}")
        if d == "physics":
            lines += [
                "  - {id: quantum, name: Quantum mechanics, level: subject, status: proposed,",
                "     children: [{id: qubits, name: Qubits, level: topic}]}",
            ]
        files[d] = "\n".join(lines) + "\n"
    return files


def taxonomy(weights: dict[str, float] | None = None) -> Taxonomy:
    """The real ``Taxonomy`` of TREE, written as YAML and loaded with ``load_taxonomy``."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, text in taxonomy_yaml(weights).items():
            (root / f"{name}.yaml").write_text(text, encoding="utf-8")
        return load_taxonomy(root)


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
