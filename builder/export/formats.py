"""Row builders of the export formats, one per format, in a registry.

- ``chat``: ``messages`` = [system?, user, assistant], each ``{role, content}``: the
  conversational format TRL's ``SFTTrainer`` (and axolotl's ``chat_template``) reads.
- ``alpaca``: ``instruction`` (the problem), ``input`` (extra context: a code signature, or
  empty), ``output`` (the answer).
- ``sharegpt``: ``conversations`` = [system?, human, gpt], each ``{from, value}``.
- ``text``: ``text``, for continued pre-training: sections as written, exercises as their
  Markdown (problem, then solution).

A builder returns the format's fields for one document row, or a string saying why the row
cannot be exported (counted in the summary and the card, never dropped silently).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

from builder.export.exercise import QA, exercise_qa, with_reasoning
from builder.export.options import ExportOptions

Fields = dict[str, Any]
Builder = Callable[[dict[str, Any], ExportOptions], Fields | str]

_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
_TURN = pa.struct([("from", pa.string()), ("value", pa.string())])
NO_QA = "no question and answer in `structured`"
EMPTY_TEXT = "empty text"


def _qa(row: dict[str, Any]) -> QA | str:
    qa = exercise_qa(row.get("exercise_type"), row.get("structured"))
    return NO_QA if qa is None else qa


def _answer(qa: QA, row: dict[str, Any], opts: ExportOptions) -> str:
    return with_reasoning(qa.answer, row.get("reasoning"), opts.reasoning)


def _conversation(
    row: dict[str, Any], opts: ExportOptions, keys: tuple[str, str], roles: tuple[str, str, str]
) -> list[dict[str, str]] | str:
    """An exercise as [system?, user, assistant] turns, each ``{keys[0]: role, keys[1]: text}``
    with the format's own role names (``roles``), or why it has none."""
    qa = _qa(row)
    if isinstance(qa, str):
        return qa
    system, user, assistant = roles
    turns = [(system, opts.system)] if opts.system else []
    turns += [(user, qa.prompt), (assistant, _answer(qa, row, opts))]
    return [{keys[0]: role, keys[1]: text} for role, text in turns]


def chat_row(row: dict[str, Any], opts: ExportOptions) -> Fields | str:
    messages = _conversation(row, opts, ("role", "content"), ("system", "user", "assistant"))
    return messages if isinstance(messages, str) else {"messages": messages}


def alpaca_row(row: dict[str, Any], opts: ExportOptions) -> Fields | str:
    qa = _qa(row)
    if isinstance(qa, str):
        return qa
    return {"instruction": qa.question, "input": qa.context, "output": _answer(qa, row, opts)}


def sharegpt_row(row: dict[str, Any], opts: ExportOptions) -> Fields | str:
    turns = _conversation(row, opts, ("from", "value"), ("system", "human", "gpt"))
    return turns if isinstance(turns, str) else {"conversations": turns}


def text_row(row: dict[str, Any], opts: ExportOptions) -> Fields | str:
    text = (row.get("text") or "").strip()
    if not text:
        return EMPTY_TEXT
    return {"text": with_reasoning(text, row.get("reasoning"), opts.reasoning)}


#: format name -> (row builder, Arrow fields of what it returns)
FORMATS: dict[str, tuple[Builder, list[pa.Field]]] = {
    "chat": (chat_row, [pa.field("messages", pa.list_(_MESSAGE))]),
    "alpaca": (
        alpaca_row,
        [pa.field(n, pa.string()) for n in ("instruction", "input", "output")],
    ),
    "sharegpt": (sharegpt_row, [pa.field("conversations", pa.list_(_TURN))]),
    "text": (text_row, [pa.field("text", pa.string())]),
}
