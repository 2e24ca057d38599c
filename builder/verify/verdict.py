"""The outcome of checking one document: a typed record, never a silent drop."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

#: Reasons a check fails (``verified`` is False). Stable strings: reports count them.
CODE_FAILURES: tuple[str, ...] = (
    "tests_failed",
    "timeout",
    "memory",
    "crashed",
    "syntax_error",
    "no_tests",
    "no_solution",
    "output_limit",
    "forbidden",
)
QUANT_FAILURES: tuple[str, ...] = ("unparseable_answer", "answer_mismatch")
FAILURE_REASONS: tuple[str, ...] = CODE_FAILURES + QUANT_FAILURES
#: ``ok`` goes with verified True; ``unchecked`` with None (nothing to check against).
REASONS: tuple[str, ...] = ("ok", "unchecked", *FAILURE_REASONS)

MAX_DETAIL = 500


def excerpt(text: str | None, limit: int = MAX_DETAIL) -> str | None:
    """Cap a detail string (keeps the start, where the failing line usually is)."""
    if text is None:
        return None
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Verdict:
    """``verified``: True (checked and right), False (checked and wrong), None (not checkable).

    ``reason`` is always set: "ok", "unchecked", or one of ``FAILURE_REASONS``; ``detail`` is a
    short human excerpt (the failing assertion, the two disagreeing answers...); ``checker``
    names what checked it ("sandbox", "sympy", "sympy+second_sample").
    """

    verified: bool | None
    reason: str | None
    detail: str | None = None
    checker: str | None = None

    def __post_init__(self) -> None:
        if self.verified is False and self.reason not in FAILURE_REASONS:
            raise ValueError(f"a failed verdict needs a failure reason, got {self.reason!r}")
        if self.reason is not None and self.reason not in REASONS:
            raise ValueError(f"unknown verdict reason {self.reason!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def passed(checker: str, detail: str | None = None) -> Verdict:
    return Verdict(True, "ok", excerpt(detail), checker)


def failed(reason: str, detail: str | None, checker: str) -> Verdict:
    return Verdict(False, reason, excerpt(detail) or reason, checker)


def unchecked(detail: str, checker: str | None = None) -> Verdict:
    return Verdict(None, "unchecked", excerpt(detail), checker)
