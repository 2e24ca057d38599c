"""Generation -> filters -> real verification: hostile exercises are contained.

``corpus generate`` (the build's generate stage, the real engine) asks the loopback fake
OpenAI server, which answers with exercises whose reference solutions are wrong, loop
forever, print without end, read files, open sockets or fork repeatedly. Each one must end
up in rejected with stage "verify" and a reason; correct exercises are kept with
``verified = True``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from builder.filters import filter_documents, rejection_counts
from builder.settings.filters import FilterSettings, VerifySettings
from tests.support.fake_openai_server import FakeOpenAIServer
from tests.support.generation import generate_rows

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


def topic(name: str) -> str:
    """The topic id of the unit named ``name`` (its topic name is "Functions (name)")."""
    return name.replace("_", "-")


def name_of(row: dict[str, Any]) -> str:
    return row["topic"].replace("-", "_")


def _prompt(body: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content")) for m in body["messages"])


def reply(body: dict[str, Any]) -> dict:
    """The fake model's answer, chosen by the unit named in the rendered prompt."""
    prompt = _prompt(body)
    found = re.search(r"Functions \((\w+)\)", prompt)
    assert found, prompt[:500]
    name = found.group(1)
    if "final_answer" in str(body.get("response_format")) or "final answer" in prompt.lower():
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


def run_generate(
    srv: FakeOpenAIServer,
    responder: Callable[[dict[str, Any]], Any],
    names: list[str],
    template: str,
    root: Path,
) -> list[dict[str, Any]]:
    """Generate one ``template`` document per unit (one unit per name, its topic named
    "Functions (name)") with ``corpus generate`` on the fake server; the rows it wrote."""
    srv.responder = responder
    gen = generate_rows(
        root,
        srv.base_url,
        {topic(name): f"Functions ({name})" for name in names},
        templates=[template],
        llm={"max_attempts": 1},
        discipline=("computer-science", "Computer science"),
        subject=("programming", "Programming"),
    )
    assert gen.exit_code == 0, (gen.output, gen.error)
    return gen.rows


def test_hostile_solutions_are_contained_and_recorded(fake_openai, tmp_path: Path) -> None:
    rows = run_generate(fake_openai, reply, list(SOLUTIONS), "exercise_code", tmp_path)
    assert len(rows) == len(SOLUTIONS)
    assert fake_openai.count("chat") == len(SOLUTIONS)
    verify = VerifySettings(timeout_s=10.0, max_output_kb=16)
    kept, rejected = filter_documents(rows, FilterSettings(min_tokens=20), verify)
    assert [name_of(d) for d in kept] == ["correct"]
    assert kept[0]["verified"] is True
    got = {name_of(r): r for r in rejected}
    assert set(got) == set(EXPECTED)
    for name, reason in EXPECTED.items():
        row = got[name]
        assert (row["stage"], row["reason"]) == ("verify", reason), (name, row["detail"])
        assert row["detail"]
        assert row["verified"] is False
        assert row["structured"]["solution"] == SOLUTIONS[name]
    assert rejection_counts(rejected)["verify/forbidden"] == 3


def test_quantitative_answers_are_checked(fake_openai, tmp_path: Path) -> None:
    names = ["correct", "wrong"]
    rows = run_generate(fake_openai, reply, names, "exercise_quantitative", tmp_path)
    assert sorted(r["structured"]["final_answer"] for r in rows) == ["60", "61"]
    verify = VerifySettings(second_sample=False)
    kept, rejected = filter_documents(rows, FilterSettings(min_tokens=20), verify)
    assert [(name_of(d), d["verified"]) for d in kept] == [("correct", True)]
    (rej,) = rejected
    assert (rej["stage"], rej["reason"]) == ("verify", "answer_mismatch")


def test_huge_model_reply_is_recorded_and_rejected(fake_openai, tmp_path: Path) -> None:
    huge = "All work and no play makes a dull textbook. " * 100_000  # ~4.4 MB
    (row,) = run_generate(fake_openai, lambda body: huge, ["huge"], "section", tmp_path)
    assert len(row["text"]) > 4_000_000
    kept, rejected = filter_documents([row], FilterSettings(), VerifySettings())
    assert kept == [] and rejected[0]["reason"] == "repetition"
