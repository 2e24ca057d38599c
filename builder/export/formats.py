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


def chat_row(row: dict[str, Any], opts: ExportOptions) -> Fields | str:
    qa = _qa(row)
    if isinstance(qa, str):
        return qa
    messages = [{"role": "system", "content": opts.system}] if opts.system else []
    messages.append({"role": "user", "content": qa.prompt})
    messages.append({"role": "assistant", "content": _answer(qa, row, opts)})
    return {"messages": messages}


def alpaca_row(row: dict[str, Any], opts: ExportOptions) -> Fields | str:
    qa = _qa(row)
    if isinstance(qa, str):
        return qa
    return {"instruction": qa.question, "input": qa.context, "output": _answer(qa, row, opts)}


def sharegpt_row(row: dict[str, Any], opts: ExportOptions) -> Fields | str:
    qa = _qa(row)
    if isinstance(qa, str):
        return qa
    turns = [{"from": "system", "value": opts.system}] if opts.system else []
    turns.append({"from": "human", "value": qa.prompt})
    turns.append({"from": "gpt", "value": _answer(qa, row, opts)})
    return {"conversations": turns}


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
