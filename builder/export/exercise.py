"""An exercise row as a student sees it (the question) and as a teacher answers it.

Exercises are stored with a ``structured`` JSON string holding the fields of
``builder.templates.REQUIRED_FIELDS``: code ``problem``/``signature``/``tests``/``solution``,
quantitative ``problem``/``worked_solution``/``final_answer``, conceptual
``problem``/``answer``. The question is what a student gets (the problem, and for code the
signature to implement; the tests stay hidden, as they would in class), the answer is the
worked solution. A ``solution`` row whose ``structured`` carries its exercise's problem is
read the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: answer fields by exercise type, and the order in which an unknown type is tried
_ANSWER_FIELDS: tuple[str, ...] = ("worked_solution", "answer", "solution")


@dataclass(frozen=True)
class QA:
    """One exercise as an instruction pair: what the student is asked, and the answer.
    ``context`` is extra input that goes with the question (the code signature)."""

    question: str
    context: str
    answer: str

    @property
    def prompt(self) -> str:
        """Question and context as one user message."""
        return f"{self.question}\n\n{self.context}" if self.context else self.question


def _fields(structured: Any) -> dict[str, Any] | None:
    if isinstance(structured, dict):
        return structured
    if not isinstance(structured, str) or not structured.strip():
        return None
    try:
        value = json.loads(structured, strict=False)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def exercise_qa(exercise_type: str | None, structured: Any) -> QA | None:
    """The question and answer of an exercise row, or None when its ``structured`` has no
    problem or no answer (such rows are counted and skipped by the export)."""
    f = _fields(structured)
    if f is None:
        return None
    problem = _text(f.get("problem"))
    if not problem:
        return None
    kind = exercise_type or ("code" if "signature" in f else None)
    if kind == "code":
        signature, solution = _text(f.get("signature")), _text(f.get("solution"))
        if not solution:
            return None
        context = f"```python\n{signature}\n```" if signature else ""
        return QA(problem, context, f"```python\n{solution}\n```")
    if kind == "quantitative" or "final_answer" in f:
        worked, final = _text(f.get("worked_solution")), _text(str(f.get("final_answer") or ""))
        if not worked and not final:
            return None
        parts = [p for p in (worked, f"**Final answer:** {final}" if final else "") if p]
        return QA(problem, "", "\n\n".join(parts))
    for name in _ANSWER_FIELDS:
        answer = _text(f.get(name))
        if answer:
            return QA(problem, "", answer)
    return None


def with_reasoning(answer: str, reasoning: str | None, mode: str) -> str:
    """The assistant text for ``--reasoning``: ``include`` prefixes ``<think>…</think>``
    (the form reasoning models are trained on); other modes leave the answer alone."""
    if mode == "include" and reasoning and reasoning.strip():
        return f"<think>\n{reasoning.strip()}\n</think>\n\n{answer}"
    return answer
