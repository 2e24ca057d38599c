"""Template vocabulary: kinds, required structured fields, shared files, the difficulty
ladder and the rendering of structured exercises.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from builder.records import Unit

Kind = Literal["section", "exercise", "solution", "transform", "system"]
ExerciseType = Literal["code", "quantitative", "conceptual"]

#: Fields a structured exercise must carry, by ``exercise_type``. builder.verify reads these
#: from ``doc["structured"]``: code exercises run ``solution`` then ``tests`` (assert-based
#: Python) in a sandbox; quantitative exercises check ``final_answer`` (a number or a
#: sympy-parsable expression) against the ``worked_solution`` or a second sample.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "code": ("problem", "signature", "tests", "solution"),
    "quantitative": ("problem", "worked_solution", "final_answer"),
    "conceptual": ("problem", "answer"),
}

AUDIENCES_FILE = "_audiences.yaml"
STYLES_FILE = "_styles.yaml"
OPENERS_FILE = "_openers.yaml"
SHARED_FILES = (AUDIENCES_FILE, STYLES_FILE, OPENERS_FILE)

#: Variables every template may use: the Unit's fields, the Unit itself, and the request's.
UNIT_VARIABLES: frozenset[str] = frozenset(Unit.__dataclass_fields__)
REQUEST_VARIABLES: frozenset[str] = frozenset(
    {"unit", "audience", "style", "opener", "sample_index", "kind", "exercise_type", "template"}
)
#: Jinja's own globals (range, dict, namespace, ...): usable, sandboxed like the rest.
JINJA_GLOBALS: frozenset[str] = frozenset({"range", "dict", "namespace", "cycler", "joiner"})
#: Extra variables of ``kind: transform`` templates (the exercise being evolved).
TRANSFORM_VARIABLES: frozenset[str] = frozenset(
    {"exercise", "evolution", "step", "source_difficulty", "target_difficulty"}
)


#: Difficulty labels from easy to hard; a transform moves an exercise up this ladder.
DIFFICULTY_LADDER: tuple[str, ...] = ("basic", "intermediate", "advanced", "expert")
DIFFICULTY_ALIASES: dict[str, str] = {
    "introductory": "basic",
    "beginner": "basic",
    "elementary": "basic",
    "easy": "basic",
    "medium": "intermediate",
    "hard": "advanced",
}


def harder(difficulty: str | None, steps: int = 1) -> str:
    """The difficulty label ``steps`` rungs above ``difficulty``.

    Labels on the ladder move up it ("basic" -> "intermediate"); past the top, or for a
    label not on the ladder, a counter is appended ("expert" -> "expert+1", "x+1" -> "x+2"),
    so the label always increases and stays readable.
    """
    label = (difficulty or "intermediate").strip().lower()
    extra = 0
    m = re.fullmatch(r"(.+?)\+(\d+)", label)
    if m:
        label, extra = m.group(1), int(m.group(2))
    canon = DIFFICULTY_ALIASES.get(label, label)
    if canon in DIFFICULTY_LADDER and not extra:
        i = DIFFICULTY_LADDER.index(canon) + steps
        if i < len(DIFFICULTY_LADDER):
            return DIFFICULTY_LADDER[i]
        return f"{DIFFICULTY_LADDER[-1]}+{i - len(DIFFICULTY_LADDER) + 1}"
    return f"{canon}+{extra + steps}"


def _unfence(code: str) -> str:
    """Code without a surrounding Markdown fence (models often add one inside JSON)."""
    text = code.strip()
    m = re.fullmatch(r"```[\w+-]*\n(.*?)\n?```", text, flags=re.S)
    return m.group(1).strip("\n") if m else text


def structured_field(structured: Mapping[str, Any], name: str) -> str:
    """A field of a structured exercise as clean text (code fields lose Markdown fences)."""
    value = structured.get(name)
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    if name in ("signature", "tests", "solution"):
        return _unfence(text)
    return text.strip()


def structured_problem(exercise_type: str | None, structured: Any) -> str | None:
    """Why ``structured`` is not a usable exercise of ``exercise_type``, or None if it is."""
    if exercise_type not in REQUIRED_FIELDS:
        return f"unknown exercise_type {exercise_type!r}"
    if not isinstance(structured, Mapping):
        return "output is not a JSON object"
    missing = [f for f in REQUIRED_FIELDS[exercise_type] if f not in structured]
    if missing:
        return "missing field(s): " + ", ".join(missing)
    bad = [
        f
        for f in REQUIRED_FIELDS[exercise_type]
        if not isinstance(structured[f], str | int | float) or isinstance(structured[f], bool)
    ]
    if bad:
        return "field(s) not text: " + ", ".join(bad)
    empty = [f for f in REQUIRED_FIELDS[exercise_type] if not structured_field(structured, f)]
    if empty:
        return "empty field(s): " + ", ".join(empty)
    return None


def render_structured(exercise_type: str, structured: Mapping[str, Any]) -> str:
    """A structured exercise as readable Markdown: the problem first, then solution/answer."""
    f = {name: structured_field(structured, name) for name in REQUIRED_FIELDS[exercise_type]}
    if exercise_type == "code":
        return (
            f"### Exercise\n\n{f['problem']}\n\n```python\n{f['signature']}\n```\n\n"
            f"### Tests\n\n```python\n{f['tests']}\n```\n\n"
            f"### Solution\n\n```python\n{f['solution']}\n```"
        )
    if exercise_type == "quantitative":
        return (
            f"### Exercise\n\n{f['problem']}\n\n### Worked solution\n\n"
            f"{f['worked_solution']}\n\n**Final answer:** {f['final_answer']}"
        )
    return f"### Question\n\n{f['problem']}\n\n### Answer\n\n{f['answer']}"
