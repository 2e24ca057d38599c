"""Generation -> filters -> real verification: hostile scripted exercises are contained.

A scripted model returns exercises whose reference solutions are wrong, loop forever, print
without end, read files, open sockets or fork repeatedly. Each one must end up in rejected
with stage "verify" and a reason; correct exercises are kept with ``verified = True``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.filters import filter_documents, rejection_counts
from builder.generate import generate, read_generated
from builder.llm.fake import ScriptedLLM
from builder.records import ChatRequest, Unit
from builder.settings.filters import FilterSettings, VerifySettings
from builder.settings.generate import GenerateSettings
from builder.templates import load_templates

ROOT = Path(__file__).resolve().parent.parent

SIGNATURE = 'def add(a: int, b: int) -> int:\n    """Return the sum of a and b."""'
TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\nassert add(10, 5) == 15"

SOLUTIONS = {
    "correct": "def add(a: int, b: int) -> int:\n    return a + b",
    "wrong": "def add(a: int, b: int) -> int:\n    return a - b",
    "infinite_loop": "def add(a: int, b: int) -> int:\n    while True:\n        pass",
    "huge_output": (
        "def add(a: int, b: int) -> int:\n    while True:\n        print('spam' * 1000)"
    ),
    "read_file": (
        "def add(a: int, b: int) -> int:\n"
        "    with open('/etc/passwd') as fh:\n"
        "        fh.read()\n"
        "    return a + b"
    ),
    "socket": (
        "import socket\n\n"
        "def add(a: int, b: int) -> int:\n"
        "    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
        "    s.connect(('127.0.0.1', 9))\n"
        "    return a + b"
    ),
    "fork_bomb": (
        "import os\n\ndef add(a: int, b: int) -> int:\n    while True:\n        os.fork()"
    ),
}
EXPECTED = {
    "wrong": "tests_failed",
    "infinite_loop": "timeout",
    "huge_output": "output_limit",
    "read_file": "forbidden",
    "socket": "forbidden",
    "fork_bomb": "forbidden",
}


def unit(name: str) -> Unit:
    return Unit(
        unit_id=f"unit-{name}",
        discipline="computer-science",
        subject="programming",
        topic=f"{name}-topic",
        taxonomy_path=f"computer-science/programming/{name}-topic",
        discipline_name="Computer science",
        subject_name="Programming",
        topic_name=f"Functions ({name})",
        concepts=("functions", "return values"),
        difficulty="basic",
    )


def reply(request: ChatRequest) -> dict:
    name = request.metadata["unit_id"].removeprefix("unit-")
    if request.metadata["exercise_type"] == "quantitative":
        answer = "60" if name == "correct" else "61"
        return {
            "problem": "A car travels 120 km in 2 hours. What is its average speed in km/h?",
            "worked_solution": "speed = distance / time\nspeed = 120 / 2\nspeed = 60",
            "final_answer": answer,
        }
    return {
        "problem": "Write a function add that returns the sum of two integers, e.g. add(1, 2) = 3.",
        "signature": SIGNATURE,
        "tests": TESTS,
        "solution": SOLUTIONS[name],
    }


@pytest.fixture(scope="module")
def tset():
    return load_templates(ROOT / "templates")


def test_hostile_solutions_are_contained_and_recorded(tset, tmp_path: Path) -> None:
    out = tmp_path / "gen.jsonl"
    settings = GenerateSettings(templates=["exercise_code"], evolve=False)
    units = [unit(name) for name in SOLUTIONS]
    generate(units, tset, ScriptedLLM(reply), settings, out)
    rows = list(read_generated(out).values())
    assert len(rows) == len(SOLUTIONS)
    verify = VerifySettings(timeout_s=2.0, max_output_kb=16)
    kept, rejected = filter_documents(rows, FilterSettings(min_tokens=20), verify)
    assert [d["unit_id"] for d in kept] == ["unit-correct"]
    assert kept[0]["verified"] is True
    got = {r["unit_id"].removeprefix("unit-"): r for r in rejected}
    assert set(got) == set(EXPECTED)
    for name, reason in EXPECTED.items():
        row = got[name]
        assert (row["stage"], row["reason"]) == ("verify", reason), (name, row["detail"])
        assert row["detail"]
        assert row["verified"] is False
        assert row["structured"]["solution"] == SOLUTIONS[name]
    assert rejection_counts(rejected)["verify/forbidden"] == 3


def test_quantitative_answers_are_checked(tset, tmp_path: Path) -> None:
    out = tmp_path / "gen.jsonl"
    settings = GenerateSettings(templates=["exercise_quantitative"], evolve=False)
    generate([unit("correct"), unit("wrong")], tset, ScriptedLLM(reply), settings, out)
    rows = list(read_generated(out).values())
    verify = VerifySettings(second_sample=False)
    kept, rejected = filter_documents(rows, FilterSettings(min_tokens=20), verify)
    assert [(d["unit_id"], d["verified"]) for d in kept] == [("unit-correct", True)]
    (rej,) = rejected
    assert (rej["stage"], rej["reason"]) == ("verify", "answer_mismatch")


def test_huge_model_reply_is_recorded_and_rejected(tset, tmp_path: Path) -> None:
    out = tmp_path / "gen.jsonl"
    settings = GenerateSettings(templates=["section"], evolve=False)
    huge = "All work and no play makes a dull textbook. " * 100_000  # ~4.4 MB
    generate([unit("huge")], tset, ScriptedLLM(lambda r: huge), settings, out)
    (row,) = read_generated(out).values()
    assert len(row["text"]) > 4_000_000
    kept, rejected = filter_documents([row], FilterSettings(), VerifySettings())
    assert kept == [] and rejected[0]["reason"] == "repetition"
