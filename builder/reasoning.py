"""Reasoning traces kept apart from the answer.

Reasoning models return their thinking in one of two ways: separately, as
``message.reasoning_content`` (DeepSeek's API, vLLM's reasoning parsers; some servers call
it ``reasoning``), or inline, as a ``<think>…</think>`` block before the answer (the raw
output of DeepSeek-R1 and its distillations; a chat template that opens the block itself
leaves only the closing tag in the reply).

``message_text`` folds a separate trace into the text as a ``<think>`` block, so the
engine stores one string per reply (the cache keeps the reply as it came, and its key,
which hashes the request, does not change). ``split_reasoning`` takes that string apart
again; it runs wherever a reply is read (a fresh answer, a cache hit, a batch result), so
every path gives the same split. Schema checks, filters and verification see the answer
only; ``ChatResult.reasoning`` and the document's ``reasoning`` column carry the trace.
"""

from __future__ import annotations

from typing import Any

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
#: message fields that servers use for a separate reasoning trace, in order of preference
REASONING_FIELDS: tuple[str, ...] = ("reasoning_content", "reasoning")


def message_text(message: dict[str, Any]) -> str | None:
    """The reply text of a chat message, with a separate reasoning trace folded in front as
    a ``<think>`` block (None when the message has neither content nor reasoning)."""
    content = message.get("content")
    reasoning = next(
        (r for f in REASONING_FIELDS if isinstance(r := message.get(f), str) and r.strip()),
        None,
    )
    if reasoning is None:
        return content
    return f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{content or ''}"


def split_reasoning(text: str | None) -> tuple[str | None, str | None]:
    """``(reasoning, answer)`` of a reply. No think block: ``(None, text)`` unchanged. A
    block never closed (the reply was cut while thinking): everything is reasoning and the
    answer is empty."""
    if text is None:
        return None, None
    body = text.lstrip()
    if body.startswith(THINK_OPEN):
        inner = body[len(THINK_OPEN) :]
        reasoning, closed, answer = inner.partition(THINK_CLOSE)
        if not closed:
            return reasoning.strip(), ""
        return reasoning.strip(), answer.lstrip()
    if THINK_CLOSE in text and THINK_OPEN not in text:
        reasoning, _, answer = text.partition(THINK_CLOSE)
        return reasoning.strip(), answer.lstrip()
    return None, text


def answer_of(text: str | None) -> str | None:
    """The answer part of a reply (what schema checks and verification judge)."""
    return split_reasoning(text)[1]
