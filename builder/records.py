"""Typed records that flow between stages.

Each stage takes an iterable of one record type and yields the next:
``Unit`` (walker) -> ``ChatRequest`` (templates) -> ``ChatResult`` (LLM engine) ->
document rows (generate/filters/verify) -> corpus (assembly). Records are plain frozen
dataclasses so they pickle, hash and serialise to JSON without surprises.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

import pyarrow as pa

from builder.reasoning import split_reasoning

# One encoder for every call (``json.dumps`` with options builds a new one each time).
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
).encode


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the form every hash in the builder is over."""
    return _CANONICAL(obj)


def sha256_hex(obj: Any) -> str:
    """sha256 of ``canonical_json(obj)`` (or of the string itself when given a str)."""
    data = obj if isinstance(obj, str) else canonical_json(obj)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Unit:
    """One generation unit produced by the walker (GLAN: a subject, 1-2 sessions, 1-5 concepts).

    Ids are taxonomy node ids; ``*_name`` fields are the human names templates show.
    ``taxonomy_path`` is the ids from the discipline down to the unit's node, joined by '/'.
    """

    unit_id: str
    discipline: str
    subject: str
    topic: str
    taxonomy_path: str
    discipline_name: str
    subject_name: str
    topic_name: str
    concepts: tuple[str, ...] = ()
    session: str | None = None
    session_index: int | None = None
    difficulty: str = "intermediate"
    level: str | None = None
    description: str | None = None
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        # Every field is a str, int, None or a tuple of str: a shallow copy is what
        # ``dataclasses.asdict`` returns (it deep-copies each value) at a tenth of the cost;
        # templates render from this once per request.
        d = {name: getattr(self, name) for name in _UNIT_FIELDS}
        d["concepts"] = list(self.concepts)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Unit:
        d = dict(d)
        d["concepts"] = tuple(d.get("concepts") or ())
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})


_UNIT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Unit))


@dataclass(frozen=True)
class ChatRequest:
    """One chat-completion request as the engine sees it.

    ``id`` is stable across runs (derived from unit, template and sample index) and is what
    resume keys on. ``params`` holds every sampling parameter explicitly (temperature, top_p,
    max_tokens, seed, ...). ``schema`` is a JSON schema when structured output is wanted.
    ``metadata`` is carried through to the result untouched (provenance).
    """

    id: str
    messages: tuple[dict[str, str], ...]
    params: dict[str, Any] = field(default_factory=dict)
    schema: dict[str, Any] | None = None
    sample_index: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash(self.id)


@dataclass(frozen=True)
class ChatResult:
    """The outcome of one ``ChatRequest``: either text (``ok``) or a recorded failure.

    ``status`` is ``ok`` | ``length`` (truncated) | ``invalid`` (structured output that did
    not validate after the repair retry) | ``failed`` (kept failing, or a fatal 4xx) |
    ``skipped`` (not sent: budget cap or interrupt). Failures are records, never ``None``.

    ``text`` is the answer; ``reasoning`` is the model's reasoning trace when it returned
    one (``reasoning_content``, or a ``<think>`` block). The engine stores a reply as one
    string with the trace as a ``<think>`` prefix; building the result splits it
    (``builder.reasoning``), so fresh, cached and batch results split the same way.
    """

    request_id: str
    status: str
    text: str | None = None
    parsed: Any = None
    finish_reason: str | None = None
    model: str | None = None
    endpoint: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    cached: bool = False
    latency_s: float = 0.0
    request_sha256: str | None = None
    error: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    reasoning: str | None = None

    def __post_init__(self) -> None:
        if self.reasoning is None and self.text is not None:
            reasoning, answer = split_reasoning(self.text)
            if reasoning is not None:
                object.__setattr__(self, "reasoning", reasoning)
                object.__setattr__(self, "text", answer)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# Columns of a corpus document row (DESIGN.md "Document row"); assembly enforces this order.
DOCUMENT_COLUMNS: tuple[str, ...] = (
    "id",
    "text",
    "kind",
    "discipline",
    "subject",
    "topic",
    "taxonomy_path",
    "session",
    "concepts",
    "audience",
    "style",
    "difficulty",
    "template",
    "template_sha256",
    "model",
    "seed",
    "request_sha256",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "n_tokens",
    "verified",
    "dup_cluster",
    "created_at",
)

# Columns of rejected.parquet: the document columns that exist plus where and why it was dropped.
REJECTION_COLUMNS: tuple[str, ...] = ("id", "stage", "reason", "detail")


# --------------------------------------------------------------------------- documents


class ResultStatus(StrEnum):
    """What became of one generation request (``ChatResult.status``, the ``status`` column)."""

    OK = "ok"
    LENGTH = "length"  # cut off by max_tokens
    INVALID = "invalid"  # structured output that did not validate after the repair retry
    FAILED = "failed"  # kept failing, or a fatal 4xx
    SKIPPED = "skipped"  # not sent (budget cap or interrupt): never stored


class RejectStage(StrEnum):
    """The stage that dropped a document (the ``stage`` column of rejected rows)."""

    GENERATE = "generate"
    FILTER = "filter"
    VERIFY = "verify"
    QUALITY = "quality"
    DEDUP = "dedup"
    DECONTAM = "decontam"
    REVIEW = "review"


class RejectReason(StrEnum):
    """Why a document was dropped, for the filter and generation stages (the ``reason``
    column). The verify stage records its verifier's reason and dedup/decontam theirs."""

    FAILED = "failed"
    MALFORMED = "malformed"
    TRUNCATED = "truncated"
    EMPTY = "empty"
    REFUSAL = "refusal"
    TOO_SHORT = "too_short"
    REPETITION = "repetition"
    WRONG_LANGUAGE = "wrong_language"
    CODE_ERROR = "code_error"
    OFF_TOPIC = "off_topic"
    LOW_VALUE = "low_value"
    SEMANTIC_DUP = "semantic_dup"
    CURATOR = "curator"


#: Provenance and verification columns that follow ``DOCUMENT_COLUMNS`` in documents.
EXTRA_COLUMNS: tuple[str, ...] = (
    "exercise_type",
    "structured",
    "unit_id",
    "request_id",
    "sample_index",
    "parent_id",
    "evolution_step",
    "evolution",
    "source_template",
    "reasoning",  # a reasoning model's trace, apart from text/structured (builder.reasoning)
    "reasoning_tokens",
    # Quality gates (builder.stages.quality): null until the quality stage has run.
    "code_ok",
    "code_detail",
    "relevance",
    "edu_score",
    "judge_rationale",
    "judge_model",
    "judge_error",
)
#: Columns only generation rows carry (engine outcome and resume keys).
GENERATION_ONLY_COLUMNS: tuple[str, ...] = (
    "status",
    "error",
    "output",
    "prompt_sha256",
    "cost",
    "cached",
)

_TYPES: dict[str, pa.DataType] = {
    "concepts": pa.list_(pa.string()),
    "seed": pa.int64(),
    "prompt_tokens": pa.int64(),
    "completion_tokens": pa.int64(),
    "n_tokens": pa.int64(),
    "verified": pa.bool_(),
    "sample_index": pa.int64(),
    "evolution_step": pa.int64(),
    "cost": pa.float64(),
    "cached": pa.bool_(),
    "reasoning_tokens": pa.int64(),
    "code_ok": pa.bool_(),
    "relevance": pa.float32(),
    "edu_score": pa.int8(),
}


def _schema(columns: tuple[str, ...]) -> pa.Schema:
    return pa.schema([pa.field(c, _TYPES.get(c, pa.string())) for c in columns])


#: One Arrow schema for a document row: what generation writes (plus the generation-only
#: columns), what filter/verify keep, and what dedup, decontamination and assembly read.
#: ``structured`` holds the exercise's JSON as canonical text.
GENERATED_SCHEMA: pa.Schema = _schema((*DOCUMENT_COLUMNS, *EXTRA_COLUMNS, *GENERATION_ONLY_COLUMNS))
DOCUMENT_SCHEMA: pa.Schema = _schema((*DOCUMENT_COLUMNS, *EXTRA_COLUMNS))
REJECTED_SCHEMA: pa.Schema = _schema(
    (*REJECTION_COLUMNS, *DOCUMENT_COLUMNS[1:], *EXTRA_COLUMNS, "status", "error")
)


@dataclass
class Document:
    """One document row (DESIGN.md "Document row") as Python sees it between stages.

    Stages read and write these as Arrow tables with ``GENERATED_SCHEMA`` /
    ``DOCUMENT_SCHEMA``; ``from_row``/``to_row`` convert one row, turning the nested
    ``structured`` object into canonical JSON text and back.
    """

    id: str
    text: str
    kind: str
    status: ResultStatus = ResultStatus.OK
    fields: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Document:
        rest = {k: v for k, v in row.items() if k not in ("id", "text", "kind", "status")}
        if isinstance(rest.get("structured"), str):
            try:
                rest["structured"] = json.loads(rest["structured"], strict=False)
            except ValueError:
                pass
        return cls(
            id=str(row["id"]),
            text=row.get("text") or "",
            kind=str(row.get("kind") or ""),
            status=ResultStatus(row.get("status") or "ok"),
            fields=rest,
        )

    def to_row(self) -> dict[str, Any]:
        row = {"id": self.id, "text": self.text, "kind": self.kind, **self.fields}
        row["status"] = str(self.status)
        return row


def encode_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row ready for an Arrow table: nested ``structured`` becomes canonical JSON text."""
    s = row.get("structured")
    if s is not None and not isinstance(s, str):
        row = {**row, "structured": canonical_json(s)}
    return row


def decode_row(row: dict[str, Any]) -> dict[str, Any]:
    """The inverse of ``encode_row``: ``structured`` JSON text back to an object."""
    s = row.get("structured")
    if isinstance(s, str):
        try:
            row["structured"] = json.loads(s, strict=False)
        except ValueError:
            pass
    return row


def to_table(rows: list[dict[str, Any]] | pa.Table, schema: pa.Schema) -> pa.Table:
    """Row dicts, or a table built column-wise (from Polars or numpy), as an Arrow table of
    ``schema``: missing columns are null, extra ones dropped, the others cast."""
    names = schema.names
    if isinstance(rows, pa.Table):
        columns = [
            rows.column(f.name).cast(f.type)
            if f.name in rows.column_names
            else pa.nulls(rows.num_rows, type=f.type)
            for f in schema
        ]
        return pa.Table.from_arrays(columns, schema=schema)
    rows = [encode_row(r) for r in rows]
    # Column by column: the same table as ``Table.from_pylist`` of the rows, without a
    # dict per row.
    return pa.Table.from_pydict({c: [r.get(c) for r in rows] for c in names}, schema=schema)
