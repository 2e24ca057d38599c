"""Asking the model for syllabi: the prompt and schema, parsing a reply, ``generate_syllabi``."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic import ValidationError as PydanticValidationError

from builder.errors import Problem, TaxonomyError, ValidationError
from builder.records import ChatRequest, ChatResult
from builder.settings.syllabus import SyllabusSettings
from builder.syllabus.check import _looks_like_words, _read
from builder.syllabus.model import (
    _MAX_CONCEPT,
    _MAX_GOAL,
    _MAX_TITLE,
    PROMPT_VERSION,
    Session,
    _display,
    _status_ok,
    is_subject,
    sessions_sha256,
    subject_of,
    subjects,
    syllabus_path,
)
from builder.syllabus.write import _syllabus_text

if TYPE_CHECKING:
    from builder.llm.base import LLM
    from builder.taxonomy import Taxonomy

__all__ = [
    "SyllabusOutcome",
    "SyllabusReport",
    "generate_syllabi",
    "parse_reply",
    "reply_schema",
    "syllabus_request",
]


# -- generation -------------------------------------------------------------------------------


def _reply_model(settings: SyllabusSettings, lo: int, hi: int) -> type[BaseModel]:
    """A pydantic model of the reply whose JSON schema carries the count bounds."""
    session = create_model(
        "SyllabusSession",
        __config__=ConfigDict(extra="forbid"),
        title=(Annotated[str, Field(min_length=1, max_length=_MAX_TITLE)], ...),
        goals=(
            Annotated[
                list[Annotated[str, Field(min_length=1, max_length=_MAX_GOAL)]],
                Field(min_length=settings.min_goals, max_length=settings.max_goals),
            ],
            ...,
        ),
        concepts=(
            Annotated[
                list[Annotated[str, Field(min_length=1, max_length=_MAX_CONCEPT)]],
                Field(min_length=settings.min_concepts, max_length=settings.max_concepts),
            ],
            ...,
        ),
    )
    return create_model(
        "Syllabus",
        __config__=ConfigDict(extra="forbid"),
        sessions=(Annotated[list[session], Field(min_length=lo, max_length=hi)], ...),  # type: ignore[valid-type]
    )


def reply_schema(settings: SyllabusSettings) -> dict[str, Any]:
    """The JSON schema sent with a syllabus request. The prompt asks for exactly
    ``settings.sessions``; the schema accepts the tolerated range (``session_bounds``), since
    the engine refuses (and repairs) replies outside the schema before ``parse_reply`` sees
    them."""
    from builder.llm.schema import schema_for

    return schema_for(_reply_model(settings, *settings.session_bounds()))


def _prompt(
    tax: Taxonomy, subject_id: str, settings: SyllabusSettings, statuses: Sequence[str]
) -> list[dict[str, str]]:
    node = tax[subject_id]
    discipline = tax.discipline_of(node.id)
    path = " > ".join(n.name for n in tax.path(node.id))
    topics = [
        n.name
        for n in tax.descendants(node.id)
        if not n.children and _status_ok(tax, n.id, statuses)
    ][:40]
    prereq_ids: list[str] = []
    for n in tax.path(node.id):  # prerequisites of the subject and of its ancestors
        prereq_ids.extend(p for p in n.prerequisites if p not in prereq_ids)
    prereqs = [tax[p].name for p in prereq_ids if p in tax]
    lines = [
        f"Design the syllabus of a university course on {node.name} "
        f"(discipline: {discipline.name}; place in the curriculum: {path}).",
    ]
    if node.description:
        lines.append(f"Course description: {node.description}")
    if topics:
        lines.append("The course must cover these topics: " + "; ".join(topics) + ".")
    if prereqs:
        lines.append(
            "Students have already passed courses on: "
            + "; ".join(prereqs)
            + ". Build on them; do not teach them again."
        )
    lines.append(
        f"Write exactly {settings.sessions} class sessions, ordered from basic to advanced so "
        "that each session relies only on earlier ones. For each session give a short "
        f'"title", {settings.min_goals} to {settings.max_goals} learning "goals" (what a '
        f"student can do afterwards) and {settings.min_concepts} to {settings.max_concepts} "
        'key "concepts" (short noun phrases taught in that session).'
    )
    lines.append(
        'Reply with JSON only: {"sessions": [{"title": "...", "goals": ["..."], '
        '"concepts": ["..."]}]}'
    )
    return [
        {
            "role": "system",
            "content": "You are an experienced university curriculum designer. You write "
            "precise, well-ordered course syllabi.",
        },
        {"role": "user", "content": "\n".join(lines)},
    ]


def syllabus_request(
    tax: Taxonomy,
    subject_id: str,
    settings: SyllabusSettings,
    *,
    sample_index: int = 0,
    statuses: Sequence[str] = ("approved",),
) -> ChatRequest:
    """The structured-output request for one subject's syllabus.

    The prompt names the subject, its path, its topic leaves (those whose status is in
    ``statuses``) and the prerequisites of the subject and its ancestors. The request id
    (``syllabus:<subject>:<sample_index>``) and content are deterministic, so a rerun is
    answered from the engine's cache; another ``sample_index`` asks for a new sample.
    """
    node = tax[subject_id]
    return ChatRequest(
        id=f"syllabus:{node.id}:{sample_index}",
        messages=tuple(_prompt(tax, node.id, settings, statuses)),
        params={"temperature": settings.temperature, "max_tokens": settings.max_tokens},
        schema=reply_schema(settings),
        sample_index=sample_index,
        metadata={"stage": "syllabus", "subject": node.id, "prompt_version": PROMPT_VERSION},
    )


def _dedupe(items: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for item in items:
        text = " ".join(item.split())
        key = text.casefold()
        if text and key not in seen:
            seen.add(key)
            out.append(text)
    return out


def parse_reply(result: ChatResult, settings: SyllabusSettings) -> tuple[list[Session], str | None]:
    """Sessions from a structured result, or ``([], reason)`` when it is not a valid syllabus.

    Whitespace is normalised and repeated concepts/goals within a session are dropped before
    the bounds are checked; the number of sessions may differ from ``settings.sessions`` by
    ``settings.session_tolerance``.
    """
    if not result.ok:
        reason = result.error or result.status
        if result.status == "length":
            reason = f"output truncated at max_tokens ({reason})"
        return [], reason
    lo, hi = settings.session_bounds()
    model = _reply_model(settings, lo, hi)
    try:
        reply = model.model_validate(result.parsed)
    except PydanticValidationError as exc:
        err = exc.errors()[0]
        where = "/".join(str(p) for p in err["loc"]) or "(root)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        return [], f"invalid syllabus at {where}: {err['msg']}{more}"
    sessions: list[Session] = []
    for i, raw in enumerate(reply.sessions, 1):  # type: ignore[attr-defined]
        concepts = _dedupe(raw.concepts)
        goals = _dedupe(raw.goals)
        junk = [t for t in (raw.title, *goals, *concepts) if not _looks_like_words(t)]
        if junk:
            return [], f"session {i} has text that is not words: {junk[0][:40]!r}"
        if len(concepts) < settings.min_concepts:
            return [], f"session {i} has only {len(concepts)} distinct concept(s)"
        if len(goals) < settings.min_goals:
            return [], f"session {i} has only {len(goals)} distinct goal(s)"
        sessions.append(Session(" ".join(raw.title.split()), tuple(goals), tuple(concepts)))
    titles = [s.title.casefold() for s in sessions]
    if len(set(titles)) < len(titles):
        return [], "two sessions have the same title"
    return sessions, None


@dataclass(frozen=True)
class SyllabusOutcome:
    """What happened to one subject: ``written``, ``kept`` (protected file) or ``failed``."""

    subject: str
    action: str
    path: Path
    detail: str = ""
    attempts: int = 0

    def __str__(self) -> str:
        text = f"{self.action} {_display(self.path)}"
        return f"{text}: {self.detail}" if self.detail else text


@dataclass
class SyllabusReport:
    """Outcomes of ``generate_syllabi``, in the order the subjects were asked for."""

    outcomes: list[SyllabusOutcome] = field(default_factory=list)
    # The first sample index not tried yet: a rerun without it is answered from the cache.
    next_sample: int = 0

    def _with(self, action: str) -> list[SyllabusOutcome]:
        return [o for o in self.outcomes if o.action == action]

    @property
    def written(self) -> list[SyllabusOutcome]:
        return self._with("written")

    @property
    def kept(self) -> list[SyllabusOutcome]:
        return self._with("kept")

    @property
    def failed(self) -> list[SyllabusOutcome]:
        return self._with("failed")

    def problems(self) -> list[Problem]:
        """One problem per failed subject (naming it), for ``ValidationError``."""
        return [
            Problem(
                f"no valid syllabus for subject {o.subject!r} after {o.attempts} attempt(s): "
                f"{o.detail}",
                hint=f"replies are cached, so a plain rerun repeats this one: rerun with "
                f"`--sample {self.next_sample}` to ask for new samples, raise [syllabus] "
                "max_tokens or retries, or write the file by hand",
            )
            for o in self.failed
        ]


def _existing_state(path: Path, tax: Taxonomy, settings: SyllabusSettings) -> tuple[bool, str]:
    """(protected, why) for an existing syllabus file."""
    data, problems = _read(path)
    if data is None and problems:
        return True, f"it cannot be read ({problems[0].message}) and may hold a curator's work"
    if not isinstance(data, dict):
        return True, "it is not a generated syllabus"
    if data.get("status") == "approved":
        return True, "it is approved"
    sessions = data.get("sessions")
    recorded = data.get("content_sha256")
    if not isinstance(sessions, list) or not isinstance(recorded, str):
        return True, "it was written by hand (no content_sha256)"
    try:
        current = sessions_sha256(s for s in sessions if isinstance(s, dict))
    except TypeError:
        return True, "its sessions were edited"
    if current != recorded or not all(isinstance(s, dict) for s in sessions):
        return True, "a curator edited its sessions"
    return False, ""


def generate_syllabi(
    tax: Taxonomy,
    llm: LLM,
    subject_ids: Iterable[str] | None = None,
    settings: SyllabusSettings | None = None,
    *,
    force: bool = False,
    only_missing: bool = False,
    sample: int = 0,
    statuses: Sequence[str] = ("approved",),
    strict: bool = True,
    max_cost: float | None = None,
) -> SyllabusReport:
    """Ask ``llm`` for the syllabus of each subject and save them as proposed YAML files.

    ``subject_ids`` defaults to every subject whose node (and ancestors) has a status in
    ``statuses``. Files that are approved or edited by a curator are ``kept`` unless ``force``;
    with ``only_missing`` every existing file is kept. Each file is written as soon as its
    reply is valid, so an interrupted run keeps finished syllabi. Invalid replies are retried
    ``settings.retries`` times with new samples (``sample_index`` ``sample``, ``sample+1``...);
    a subject that still fails is a ``failed`` outcome, and with ``strict`` a
    ``ValidationError`` naming each failed subject is raised after everything else is saved.
    """
    from builder.taxonomy.files import atomic_write_text

    settings = settings or SyllabusSettings()
    if subject_ids is None:
        chosen = [n.id for n in subjects(tax) if _status_ok(tax, n.id, statuses)]
    else:
        chosen = []
        for sid in subject_ids:
            node = tax[sid]  # UnknownNodeError names close ids
            if not is_subject(tax, node.id):
                subj = subject_of(tax, node.id)
                hint = (
                    f"its subject is {subj.id!r}"
                    if subj is not None
                    else "`corpus taxonomy show` lists the subjects"
                )
                raise TaxonomyError(
                    f"{node.id!r} is not a subject (level {node.level!r}); syllabi belong to "
                    "subjects",
                    file=node.file,
                    line=node.line,
                    hint=hint,
                )
            if node.id not in chosen:
                chosen.append(node.id)

    report = SyllabusReport()
    outcomes: dict[str, SyllabusOutcome] = {}
    todo: list[str] = []
    for sid in chosen:
        path = syllabus_path(tax, sid)
        if path.exists() and only_missing:
            outcomes[sid] = SyllabusOutcome(sid, "kept", path, "it exists")
            continue
        if path.exists() and not force:
            protected, why = _existing_state(path, tax, settings)
            if protected:
                outcomes[sid] = SyllabusOutcome(
                    sid, "kept", path, f"not overwritten: {why} (use --force to replace it)"
                )
                continue
        todo.append(sid)

    attempts: dict[str, int] = dict.fromkeys(todo, 0)
    errors: dict[str, list[str]] = {sid: [] for sid in todo}
    pending = list(todo)
    for round_ in range(settings.retries + 1):
        if not pending:
            break
        requests = [
            syllabus_request(tax, sid, settings, sample_index=sample + round_, statuses=statuses)
            for sid in pending
        ]
        by_id = {r.id: r for r in requests}
        failed_now: list[str] = []
        for result in llm.run(requests, max_cost=max_cost):
            request = by_id.get(result.request_id)
            if request is None:
                continue
            sid = request.metadata["subject"]
            attempts[sid] += 1
            sessions, error = parse_reply(result, settings)
            if error is not None:
                errors[sid].append(f"sample {request.sample_index}: {error}")
                failed_now.append(sid)
                continue
            path = syllabus_path(tax, sid)
            generated_by = {
                "model": result.model or llm.model_name,
                "request_sha256": result.request_sha256 or llm.request_sha256(request),
                "prompt_version": PROMPT_VERSION,
                "sample_index": request.sample_index,
                "created_at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            atomic_write_text(path, _syllabus_text(tax, sid, sessions, generated_by))
            outcomes[sid] = SyllabusOutcome(
                sid, "written", path, f"{len(sessions)} sessions", attempts[sid]
            )
        done = set(outcomes)
        pending = [sid for sid in pending if sid not in done]
        # Anything the engine never answered (e.g. a budget stop) failed this round too.
        for sid in pending:
            if sid not in failed_now:
                errors[sid].append(f"sample {sample + round_}: no result (request not run)")
    for sid in pending:
        detail = "; ".join(errors[sid]) or "no result"
        outcomes[sid] = SyllabusOutcome(
            sid, "failed", syllabus_path(tax, sid), detail, attempts[sid]
        )
    report.outcomes = [outcomes[sid] for sid in chosen]
    report.next_sample = sample + settings.retries + 1
    if strict and report.failed:
        raise ValidationError(report.problems())
    return report
