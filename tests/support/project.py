"""Shared pieces of the pipeline tests (no tests here): a small project in tmp_path and a
responder for the loopback fake OpenAI server that answers every request a build sends.

The project: two disciplines, three subjects. ``programming`` and ``arithmetic`` get valid
generated syllabi (3 sessions each); ``algorithms`` always gets an invalid one, so it is walked
by its four topics. Sections about "Loops" and "Sorting" get the same text (an exact
duplicate), sections about "Binary search" quote a benchmark item (contamination), sections
about "Recursion" come back cut at max_tokens (truncated). Everything else is varied,
English, long enough for the filters, and correct: code exercises pass their tests,
quantitative answers match their worked solutions and the second samples.

Replies depend only on the request body, so any two builds produce the same corpus.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import textwrap
from pathlib import Path
from typing import Any

import polars as pl

from tests.support.fake_openai_server import FakeReply

ROOT = Path(__file__).resolve().parents[2]  # the repository (tests/support/ -> root)

BENCH_ITEM = (
    "Given a sorted list of numbers and a target value, describe how binary search finds the "
    "position of the target by repeatedly halving the search interval, and state its running "
    "time in terms of the length of the list."
)
DUP_TEXT = (
    "Loops let a program repeat work without repeating code. A for loop walks over the items "
    "of a sequence one at a time, while a while loop keeps going as long as its condition "
    "holds. An accumulator variable collects a running total, and break ends the loop early "
    "when the answer is known. Careful programmers check the first and the last pass of every "
    "loop, because off-by-one mistakes hide there. When each pass does a constant amount of "
    "work, the running time grows in proportion to the number of items, which is why a single "
    "pass over the data is usually fast enough in practice."
)

TAXONOMY = {
    "computing.yaml": """\
        # Test taxonomy: computing
        id: computing
        name: Computing
        description: Programs and algorithms.
        level: discipline
        children:
          - id: programming
            name: Programming Basics
            description: Writing small programs.
            level: subject
            children:
              - id: variables
                name: Variables and types
                description: Names, values, numbers and strings.
                level: topic
              - id: functions
                name: Functions
                description: Parameters, return values and scope.
                level: topic
          - id: algorithms
            name: Algorithms
            description: Step-by-step procedures and their cost.
            level: subject
            prerequisites: [programming]
            children:
              - id: loops
                name: Loops
                description: Repeating work with for and while.
                level: topic
              - id: sorting
                name: Sorting
                description: Putting items in order.
                level: topic
              - id: binary-search
                name: Binary search
                description: Halving a sorted range.
                level: topic
              - id: recursion
                name: Recursion
                description: Functions that call themselves.
                level: topic
        """,
    "mathematics.yaml": """\
        id: mathematics
        name: Mathematics
        description: Quantity and structure.
        level: discipline
        children:
          - id: arithmetic
            name: Arithmetic
            description: Operations on numbers.
            level: subject
            children:
              - id: fractions
                name: Fractions
                description: Parts of a whole.
                level: topic
              - id: percentages
                name: Percentages
                description: Ratios out of one hundred.
                level: topic
        """,
}


def base_config(base_url: str, run: str = "test") -> dict[str, dict[str, Any]]:
    """The test project's corpus.toml as nested dicts (see ``make_project``)."""
    return {
        "llm": {
            "base_url": base_url,
            "model": "fake-model",
            "max_concurrency": 4,
            "backoff_base_s": 0.01,
            "backoff_max_s": 0.05,
            "read_timeout_s": 20,
            "max_attempts": 8,
            "progress_interval_s": 0.5,
        },
        'llm.prices."fake-model"': {"input": 1.0, "output": 2.0},
        "taxonomy": {"dir": "taxonomy"},
        "syllabus": {"sessions": 3, "retries": 0, "max_tokens": 400},
        "walk": {"seed": 3, "order": "curriculum"},
        "generate": {"templates_dir": "templates", "documents_per_unit": 4},
        # The fake texts are random words about a topic: no relevance cut (builder.quality).
        "filters": {"min_tokens": 40, "min_relevance": -1},
        "verify": {"workers": 2, "timeout_s": 20},
        "dedup": {"threshold": 0.8, "workers": 1},
        "decontam": {"benchmarks": ["benchmarks/bench.jsonl"], "workers": 1},
        "output": {"dir": "outputs", "run": run, "license": "apache-2.0"},
        # Partitioned stages in the build's own process: a spawned pool per stage costs each
        # small build seconds of imports. The pool itself (same bytes as one process, killed
        # builds leave no worker) is tested in test_local_pool.py, which sets CORPUS_WORKERS.
        "run": {"workers": 1},
    }


def to_toml(sections: dict[str, dict[str, Any]]) -> str:
    """A small TOML writer for the test configs (scalars and lists of scalars)."""
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    return "\n".join(lines)


def make_project(
    root: Path,
    base_url: str,
    overrides: dict[str, dict[str, Any]] | None = None,
    *,
    run: str = "test",
) -> Path:
    """A project directory: corpus.toml, taxonomy/ (two disciplines), templates/ (a copy of
    the real ones), benchmarks/bench.jsonl. ``overrides`` update the config's sections (a
    value of None removes a key). Returns the config path."""
    root.mkdir(parents=True, exist_ok=True)
    tax = root / "taxonomy"
    tax.mkdir(exist_ok=True)
    for name, text in TAXONOMY.items():
        (tax / name).write_text(textwrap.dedent(text), encoding="utf-8")
    shutil.copytree(ROOT / "templates", root / "templates", dirs_exist_ok=True)
    (root / "benchmarks").mkdir(exist_ok=True)
    (root / "benchmarks" / "bench.jsonl").write_text(
        json.dumps({"id": "b1", "text": BENCH_ITEM}) + "\n", encoding="utf-8"
    )
    sections = base_config(base_url, run)
    for section, values in (overrides or {}).items():
        merged = {**sections.get(section, {}), **values}
        sections[section] = {k: v for k, v in merged.items() if v is not None}
    path = root / "corpus.toml"
    path.write_text(to_toml(sections), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- responder

_SUBJECTS = ["the method", "this idea", "the example", "a careful reader", "the rule"]
_VERBS = ["explains", "shows", "connects", "clarifies", "supports", "illustrates"]
_OBJECTS = [
    "why each step matters",
    "how the parts fit together",
    "what changes when the input grows",
    "where beginners usually slip",
    "which case needs extra care",
    "how to check a result quickly",
    "when a shortcut is safe",
    "what the final answer means",
]
_EXTRAS = [
    "Teachers often start with a small case before moving to larger ones.",
    "Writing the steps down makes mistakes much easier to find later.",
    "A quick sketch on paper helps students see the structure of the problem.",
    "Checking the boundary values is a habit worth building early on.",
    "Comparing two different approaches reveals the strengths of each one.",
    "Students remember an idea better after they explain it in their own words.",
    "Real projects rarely follow the textbook order, but the ideas still apply.",
    "Practice with varied examples builds a flexible kind of understanding.",
    "Good notation keeps long calculations short and readable for everyone.",
    "Every worked example in this section ends with a short check of the answer.",
    "The same pattern appears again in later chapters with bigger inputs.",
    "Mistakes are useful when we stop to ask what caused them in the first place.",
]
_NAMES = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta", "lambda_"]


def _rng(body: dict[str, Any]) -> random.Random:
    key = json.dumps(body.get("messages"), sort_keys=True) + str(body.get("seed"))
    return random.Random(int(hashlib.sha256(key.encode()).hexdigest()[:16], 16))


def _prose(rng: random.Random, topic: str, sentences: int = 9) -> str:
    out = [f"This lesson is about {topic}, and it builds the idea up from simple cases."]
    extras = rng.sample(_EXTRAS, k=min(len(_EXTRAS), sentences - 3))
    for extra in extras:
        n = rng.randint(2, 999)
        out.append(
            f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} "
            f"{rng.choice(_OBJECTS)} in case number {n}."
        )
        out.append(extra)
    out.append(f"In short, {topic} rewards patient and careful practice.")
    return " ".join(out)


def _schema(body: dict[str, Any]) -> dict[str, Any] | None:
    rf = body.get("response_format") or {}
    if rf.get("type") == "json_schema":
        return (rf.get("json_schema") or {}).get("schema")
    if rf.get("type") == "json_object":
        return rf.get("schema")
    return None


def _user(body: dict[str, Any]) -> str:
    """The first user message: the prompt (a repair retry appends more messages after it)."""
    users = [m.get("content") or "" for m in body.get("messages", []) if m.get("role") == "user"]
    return users[0] if users else ""


def _system(body: dict[str, Any]) -> str:
    for m in body.get("messages", []):
        if m.get("role") == "system":
            return m.get("content") or ""
    return ""


def _topic(prompt: str) -> str:
    m = re.search(r'"([^"]+)"', prompt)
    return m.group(1) if m else "the topic"


def _syllabus(body: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    prompt = _user(body)
    m = re.search(r"university course on (.+?) \(", prompt)
    name = m.group(1) if m else "Course"
    if name == "Algorithms":  # always invalid: the build walks its topics instead
        return {"sessions": [{"title": "Only one", "goals": ["x"], "concepts": ["a", "b", "c"]}]}
    sessions_schema = schema.get("properties", {}).get("sessions", {})
    n = int(sessions_schema.get("minItems", 3))
    words = ["foundations", "practice", "applications", "patterns", "review", "projects"]
    return {
        "sessions": [
            {
                "title": f"{name} {words[i % len(words)]} {i + 1}",
                "goals": [f"Use {name.lower()} {words[i % len(words)]} in small problems"],
                "concepts": [
                    f"{name.lower()} concept {i + 1}a",
                    f"{name.lower()} concept {i + 1}b",
                    f"{name.lower()} concept {i + 1}c",
                ],
            }
            for i in range(n)
        ]
    }


def _code(rng: random.Random, topic: str) -> dict[str, str]:
    name = f"{rng.choice(_NAMES)}_{rng.randint(10, 99999)}"
    a, b = rng.randint(2, 9), rng.randint(1, 50)
    problem = (
        f"In this exercise on {topic}, write a function {name} that receives an integer x and "
        f"returns x multiplied by {a} plus {b}. For example, {name}(1) returns {a + b}. The "
        "function must work for negative numbers and for zero as well, and it must not print "
        "anything or read any input from the user."
    )
    signature = f'def {name}(x: int) -> int:\n    """Return x * {a} + {b}."""'
    solution = (
        f'def {name}(x: int) -> int:\n    """Return x * {a} + {b}."""\n    return x * {a} + {b}'
    )
    tests = "\n".join(
        f"assert {name}({x}) == {x * a + b}" for x in (0, 1, 2, -3, rng.randint(5, 500))
    )
    return {"problem": problem, "signature": signature, "tests": tests, "solution": solution}


def _quant(rng: random.Random, topic: str) -> dict[str, str]:
    x, y = rng.randint(10, 9999), rng.randint(10, 9999)
    problem = (
        f"A class studying {topic} counts objects. One box holds {x} marbles and another box "
        f"holds {y} marbles. How many marbles are there in both boxes together? Give the "
        "answer as a whole number of marbles, without any unit."
    )
    worked = f"Add the two amounts.\n{x} + {y} = {x + y}"
    return {"problem": problem, "worked_solution": worked, "final_answer": str(x + y)}


def _conceptual(rng: random.Random, topic: str) -> dict[str, str]:
    return {
        "problem": f"Why does {topic} matter when solving problem number {rng.randint(1, 9999)}?",
        "answer": _prose(rng, topic, sentences=7),
    }


def responder(body: dict[str, Any]) -> Any:
    """The fake server's reply to any request a build sends (see the module docstring)."""
    rng = _rng(body)
    schema = _schema(body)
    prompt = _user(body)
    if _system(body).startswith("You are a careful problem solver"):
        m = re.search(r"holds (\d+) marbles and another box holds (\d+) marbles", prompt)
        return str(int(m.group(1)) + int(m.group(2))) if m else "0"
    if schema is not None:
        props = schema.get("properties", {})
        topic = _topic(prompt)
        if "sessions" in props:
            return json.dumps(_syllabus(body, schema))
        if "signature" in props:
            return json.dumps(_code(rng, topic))
        if "final_answer" in props:
            return json.dumps(_quant(rng, topic))
        return json.dumps(_conceptual(rng, topic))
    topic = _topic(prompt)
    if topic in ("Loops", "Sorting"):
        return DUP_TEXT
    text = _prose(rng, topic)
    if topic == "Binary search":
        return f"{text} A classic exercise reads as follows. {BENCH_ITEM} {text[:200]}"
    if topic == "Recursion":
        return FakeReply(text, finish_reason="length")
    return text


# --------------------------------------------------------------------------- reading runs


def judging_responder(body: dict[str, Any]) -> Any:
    """Teacher replies from the pipeline helpers; judge replies: 4 for sections, 1 for
    exercises, and a broken score for the young learners' exercise (to see a failure recorded)."""
    rf = body.get("response_format") or {}
    schema = (rf.get("json_schema") or {}).get("schema") or rf.get("schema") or {}
    if "score" not in schema.get("properties", {}):
        return responder(body)
    # the whole conversation: the engine's repair retry adds a user message after the first
    user = "\n".join(m["content"] for m in body["messages"] if m["role"] == "user")
    if "Below is an exercise" in user:
        if "for young_learners" in user:
            return json.dumps({"score": 9, "rationale": "out of range"})
        return json.dumps({"score": 1, "rationale": "A bare drill with no explanation."})
    return json.dumps({"score": 4, "rationale": "Clear, correct and well built."})


def untimed(value: Any, drop: tuple[str, ...] = ()) -> Any:
    """``value`` (a manifest, a marker's counters) without what differs between two runs of
    the same build: keys naming a duration or a rate (``seconds``, ``per_s``) at any depth,
    and the keys in ``drop`` (e.g. ``created_at``, ``workers``)."""
    if isinstance(value, dict):
        return {
            k: untimed(v, drop)
            for k, v in value.items()
            if "seconds" not in k and "per_s" not in k and k not in drop
        }
    return value


def corpus(run_dir: Path) -> pl.DataFrame:
    """The documents of a finished run, sorted by id."""
    return pl.read_parquet(run_dir / "documents" / "*.parquet").sort("id")


def ids_and_texts(run_dir: Path) -> list[tuple[str, str]]:
    df = corpus(run_dir)
    return list(zip(df["id"].to_list(), df["text"].to_list(), strict=True))


#: A project of tiny partitions (many partition tasks from a few documents), for the tests of
#: how partitioned stages are mapped (``test_local_pool``, ``test_follow``).
TINY_PARTITIONS: dict[str, dict[str, Any]] = {
    "walk": {"subtree": ["algorithms", "arithmetic"]},
    "generate": {"documents_per_unit": 2},
    "run": {"partition_rows": 3, "units_per_partition": 1, "flush_rows": 2},
    "llm": {"cache_dir": ".corpus-cache"},
    "output": {"dir": "outputs", "run": "r", "shard_max_rows": 5},
}
#: Environment variables that would override those projects' settings.
BUILD_ENV = ("CORPUS_CACHE_DIR", "CORPUS_OUTPUT_DIR", "CORPUS_EXECUTOR", "CORPUS_WORKERS")
