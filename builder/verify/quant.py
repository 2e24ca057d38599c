"""Check a quantitative exercise: parse its final answer and compare it with sympy.

The final answer is compared with the value the worked solution ends on (a ``\\boxed{}``, an
"answer is ..." phrase, or the right-hand side of the last ``=``) and, when a model is given,
with an independent second sample: the model solves the problem again, seeing only the
problem. Parsing and comparing live in ``builder.verify.answers`` (re-exported here);
``builder.verify`` runs ``verify_quantitative`` in a sandbox child of a server that has sympy
loaded.
"""

from __future__ import annotations

from typing import Any

from builder.llm.base import LLM
from builder.records import ChatRequest, ChatResult, sha256_hex
from builder.settings.filters import VerifySettings
from builder.verify.answers import (
    Answer,
    AnswerParseError,
    answers_match,
    equivalent,
    extract_final_value,
    latex_to_plain,
    parse_answer,
    sample_answer_text,
)
from builder.verify.verdict import Verdict, failed, passed, unchecked

__all__ = [
    "SECOND_SAMPLE_SYSTEM",
    "Answer",
    "AnswerParseError",
    "answers_match",
    "equivalent",
    "extract_final_value",
    "latex_to_plain",
    "parse_answer",
    "sample_answer_text",
    "second_sample_request",
    "verify_quantitative",
]


# -- the check ---------------------------------------------------------------------------------

SECOND_SAMPLE_SYSTEM = (
    "You are a careful problem solver. Solve the problem. Reply with only the final answer: "
    "a number or an expression, with no words, units or explanation."
)


def second_sample_request(doc: dict[str, Any], settings: VerifySettings) -> ChatRequest:
    """The request for an independent answer: the model sees only the problem."""
    structured = doc.get("structured") or {}
    problem = str(structured.get("problem") or "")
    doc_id = str(doc.get("id") or sha256_hex(problem)[:16])
    return ChatRequest(
        id=f"verify:{doc_id}:second-sample",
        messages=(
            {"role": "system", "content": SECOND_SAMPLE_SYSTEM},
            {"role": "user", "content": problem},
        ),
        params={
            "temperature": settings.second_sample_temperature,
            "top_p": 1.0,
            "max_tokens": settings.second_sample_max_tokens,
            "seed": 0,
        },
        metadata={"stage": "verify", "purpose": "second_sample", "doc_id": doc_id},
    )


def _show(readings: list[tuple[Answer, bool]]) -> str:
    values, _pct = readings[0]
    return ", ".join(str(v) for v in values)


def verify_quantitative(
    doc: dict[str, Any],
    settings: VerifySettings,
    *,
    sample: ChatResult | None = None,
    llm: LLM | None = None,
) -> Verdict:
    """Check the final answer against the worked solution and, if given, a second sample.

    ``sample`` is a finished second-sample result (the batch API fetches them together);
    otherwise, when ``llm`` is given and ``settings.second_sample`` is on, one is requested.
    """
    structured = doc.get("structured") or {}
    final = structured.get("final_answer")
    try:
        final_readings = parse_answer(final)
    except AnswerParseError as exc:
        return failed("unparseable_answer", f"final answer {final!r}: {exc}", "sympy")
    notes: list[str] = []
    checked_by: list[str] = []

    worked_value = extract_final_value(str(structured.get("worked_solution") or ""))
    if worked_value is not None:
        try:
            worked_readings = parse_answer(worked_value)
        except AnswerParseError:
            worked_readings = None
            notes.append(f"the worked solution's last value {worked_value!r} is not parseable")
        if worked_readings is not None:
            if not answers_match(final_readings, worked_readings, settings.rel_tol):
                return failed(
                    "answer_mismatch",
                    f"final answer {_show(final_readings)} disagrees with the worked "
                    f"solution's last value {_show(worked_readings)}",
                    "sympy",
                )
            checked_by.append("sympy")
    else:
        notes.append("the worked solution states no final value")

    if sample is None and llm is not None and settings.second_sample:
        sample = llm.complete(second_sample_request(doc, settings))
    if sample is not None:
        answer_text = sample_answer_text(sample.text) if sample.ok else None
        sample_readings = None
        if answer_text is not None:
            try:
                sample_readings = parse_answer(answer_text)
            except AnswerParseError:
                notes.append(f"the second sample's answer {answer_text!r} is not parseable")
        else:
            notes.append(f"the second sample gave no answer ({sample.status})")
        if sample_readings is not None:
            if not answers_match(final_readings, sample_readings, settings.rel_tol):
                return failed(
                    "answer_mismatch",
                    f"final answer {_show(final_readings)} disagrees with an independent "
                    f"second sample ({sample.model or 'model'}): {_show(sample_readings)}",
                    "sympy+second_sample",
                )
            checked_by.append("second_sample")
    if checked_by:
        return passed(
            "sympy+second_sample" if "second_sample" in checked_by else "sympy",
            "; ".join(notes) or None,
        )
    return unchecked("; ".join(notes) or "nothing to check the answer against", "sympy")
