"""Sample units and exercises used to test-render every template."""

from __future__ import annotations

from typing import Any

from builder.records import Unit
from builder.templates.spec import harder, render_structured

# --------------------------------------------------------------------------- samples


def sample_units() -> list[Unit]:
    """Units used to test-render every template: with and without optional fields."""
    return [
        Unit(
            unit_id="sample-calculus-limits",
            discipline="mathematics",
            subject="calculus",
            topic="limits",
            taxonomy_path="mathematics/calculus/limits",
            discipline_name="Mathematics",
            subject_name="Calculus",
            topic_name="Limits and continuity",
            concepts=("epsilon-delta definition", "one-sided limits", "continuity"),
            session="Limits and continuity",
            session_index=1,
            difficulty="intermediate",
            level="topic",
            description="What it means for a function to approach a value.",
            seed=1,
        ),
        Unit(
            unit_id="sample-algorithms-search",
            discipline="computer-science",
            subject="algorithms",
            topic="binary-search",
            taxonomy_path="computer-science/algorithms/binary-search",
            discipline_name="Computer science",
            subject_name="Algorithms",
            topic_name="Binary search",
            concepts=("sorted arrays", "loop invariants"),
            difficulty="basic",
        ),
        Unit(
            unit_id="sample-biology-photosynthesis",
            discipline="biology",
            subject="plant-biology",
            topic="photosynthesis",
            taxonomy_path="biology/plant-biology/photosynthesis",
            discipline_name="Biology",
            subject_name="Plant biology",
            topic_name="Photosynthesis",
            concepts=(),
            session=None,
            difficulty="advanced",
            level=None,
            description=None,
        ),
    ]


SAMPLE_EXERCISES: dict[str, dict[str, str]] = {
    "code": {
        "problem": "Write a function that returns the index of a target in a sorted list, or -1.",
        "signature": 'def find(xs: list[int], target: int) -> int:\n    """Index or -1."""',
        "tests": "assert find([1, 3, 5], 3) == 1\nassert find([], 2) == -1",
        "solution": (
            "def find(xs: list[int], target: int) -> int:\n"
            "    lo, hi = 0, len(xs) - 1\n"
            "    while lo <= hi:\n"
            "        mid = (lo + hi) // 2\n"
            "        if xs[mid] == target:\n"
            "            return mid\n"
            "        if xs[mid] < target:\n"
            "            lo = mid + 1\n"
            "        else:\n"
            "            hi = mid - 1\n"
            "    return -1"
        ),
    },
    "quantitative": {
        "problem": "Compute the limit of (x**2 - 1)/(x - 1) as x approaches 1.",
        "worked_solution": "Factor: (x - 1)(x + 1)/(x - 1) = x + 1 for x != 1, so the limit is 2.",
        "final_answer": "2",
    },
    "conceptual": {
        "problem": "Why does a plant in the dark stop producing oxygen?",
        "answer": "The light reactions that split water and release oxygen need light energy.",
    },
}


def sample_transform_extra(exercise_type: str, unit: Unit) -> dict[str, Any]:
    """Transform variables for a test render: a sample exercise of ``exercise_type``."""
    structured = dict(SAMPLE_EXERCISES[exercise_type])
    return {
        "exercise": {**structured, "text": render_structured(exercise_type, structured)},
        "evolution": {"id": "add_constraints", "instruction": "Add one more constraint."},
        "step": 1,
        "source_difficulty": unit.difficulty,
        "target_difficulty": harder(unit.difficulty),
    }
