"""Typed records that flow between stages.

Each stage takes an iterable of one record type and yields the next:
``Unit`` (walker) -> ``ChatRequest`` (templates) -> ``ChatResult`` (LLM engine) ->
document rows (generate/filters/verify) -> corpus (assembly). Records are plain frozen
dataclasses so they pickle, hash and serialise to JSON without surprises.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from builder.reasoning import split_reasoning


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the form every hash in the builder is over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


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
        d = asdict(self)
        d["concepts"] = list(self.concepts)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Unit:
        d = dict(d)
        d["concepts"] = tuple(d.get("concepts") or ())
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})


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
