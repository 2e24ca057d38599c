"""Growing the taxonomy with the model, under a curator's review.

GLAN built its subject lists by asking a model for the subjects of each discipline. Here
``expand_node`` asks for children of any node (structured output: names and descriptions),
drops the ones that repeat an existing name anywhere in the taxonomy or each other, and
inserts the rest with ``status: proposed`` and a comment saying which model proposed them and
when. Proposed nodes are invisible to builds until a curator approves them
(``approve_nodes``) or rejects them (``reject_nodes``, which removes them)::

    corpus taxonomy expand mathematics --count 8
    corpus taxonomy review
    corpus taxonomy approve topology number-theory
    corpus taxonomy reject numerology

**Duplicates.** Names are normalised (Unicode NFKC, case-folded, punctuation and a few
stop words removed, plural-ish endings stripped: ``Theories of Numbers`` ->
``theory number``), then compared exactly and with rapidfuzz's ``token_sort_ratio`` >= 90,
which catches reorderings and typos. ``token_set_ratio`` is not used: it scores 100 whenever
one name's words are a subset of the other's, so it would reject ``Linear Algebra`` next to
``Algebra``.
"""

from __future__ import annotations

import datetime as _dt
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic import ValidationError as PydanticValidationError

from builder.errors import LLMError, Problem, TaxonomyError
from builder.records import ChatRequest

if TYPE_CHECKING:
    from builder.llm.base import LLM
    from builder.taxonomy import Node, Taxonomy

__all__ = [
    "FUZZY_THRESHOLD",
    "ExpandReport",
    "Proposal",
    "approve_nodes",
    "expand_node",
    "expansion_request",
    "find_duplicate",
    "malformed",
    "normalise_name",
    "proposed_nodes",
    "reject_nodes",
]

PROMPT_VERSION = "expand-v1"
FUZZY_THRESHOLD = 90
_STOP = frozenset({"of", "the", "and", "a", "an", "in", "to", "for", "on", "with", "its"})
_MAX_NAME = 100
_MAX_DESCRIPTION = 300


def _singular(token: str) -> str:
    if len(token) > 4 and token.endswith("ies"):
        return token[:-3] + "y"
    if len(token) > 4 and token.endswith(("sses", "shes", "ches", "xes")):
        return token[:-2]
    if len(token) > 3 and token.endswith("s") and not token.endswith(("ss", "us", "is")):
        return token[:-1]
    return token


def normalise_name(name: str) -> str:
    """A comparison key for names: NFKC, case-folded, no punctuation/stop words, singular."""
    text = unicodedata.normalize("NFKC", name).casefold().replace("&", " and ")
    text = re.sub(r"[^\w\s]|_", " ", text)
    tokens = [_singular(t) for t in text.split() if t not in _STOP]
    return " ".join(tokens)


def find_duplicate(
    name: str, existing: dict[str, str], threshold: int = FUZZY_THRESHOLD
) -> str | None:
    """The key in ``existing`` (normalised name -> id) that ``name`` duplicates, or None."""
    from rapidfuzz import fuzz, process

    key = normalise_name(name)
    if not key:
        return None
    if key in existing:
        return existing[key]
    match = process.extractOne(
        key, list(existing), scorer=fuzz.token_sort_ratio, score_cutoff=threshold
    )
    return existing[match[0]] if match else None


@dataclass(frozen=True)
class Proposal:
    """One child the model proposed: ``added`` (with its new id), a ``duplicate`` of an
    existing name, or ``refused`` (malformed: ``reason`` says why)."""

    name: str
    description: str | None
    action: str  # added | duplicate | refused
    id: str | None = None
    duplicate_of: str | None = None
    reason: str | None = None


_PLACEHOLDER = re.compile(r"[<>\[\]{}]|\.\.\.|\bTODO\b|\bN/A\b", re.IGNORECASE)
_NAME_CHARS = re.compile(r"[^\W_](?:[\w\s'’,.&/()+:-]*[\w)’'.])?")


def malformed(name: str, description: str | None) -> str | None:
    """Why a proposed child cannot be a taxonomy node, or None when it can.

    Small models echo template syntax (``<n1>``, ``{subject}``) or make up codes
    (``math_20-35``); such names would become ids and prompts, so they are refused.
    """
    if _PLACEHOLDER.search(name):
        return "the name has brackets or a placeholder"
    if not _NAME_CHARS.fullmatch(name) or "_" in name:
        return "the name has stray punctuation"
    if sum(ch.isalpha() for ch in name) < 2:
        return "the name is not words"
    if description and _PLACEHOLDER.search(description):
        return "the description has brackets or a placeholder"
    return None


@dataclass
class ExpandReport:
    """What ``expand_node`` did: every proposal, and the file the new nodes went into."""

    node: str
    model: str
    proposals: list[Proposal] = field(default_factory=list)
    file: Path | None = None
    taxonomy: Taxonomy | None = None
    asked: int = 0

    @property
    def added(self) -> list[Proposal]:
        return [p for p in self.proposals if p.action == "added"]

    @property
    def duplicates(self) -> list[Proposal]:
        return [p for p in self.proposals if p.action == "duplicate"]

    @property
    def refused(self) -> list[Proposal]:
        return [p for p in self.proposals if p.action == "refused"]

    def summary(self) -> str:
        """``asked 5, got 2 usable under x (3 refused: '<n1>': the name has brackets ...)``."""
        parts: list[str] = []
        if self.refused:
            why = "; ".join(f"{p.name!r}: {p.reason}" for p in self.refused)
            parts.append(f"{len(self.refused)} refused: {why}")
        if self.duplicates:
            parts.append(f"{len(self.duplicates)} duplicate(s)")
        if len(self.proposals) < self.asked:
            parts.append(f"the model proposed {len(self.proposals)}")
        detail = f" ({'; '.join(parts)})" if parts else ""
        return f"asked {self.asked}, got {len(self.added)} usable under {self.node}{detail}"


def _reply_model(count: int) -> type[BaseModel]:
    child = create_model(
        "ProposedChild",
        __config__=ConfigDict(extra="forbid"),
        name=(Annotated[str, Field(min_length=1, max_length=_MAX_NAME)], ...),
        description=(Annotated[str, Field(min_length=1, max_length=_MAX_DESCRIPTION)], ...),
    )
    return create_model(
        "Proposals",
        __config__=ConfigDict(extra="forbid"),
        children=(Annotated[list[child], Field(min_length=1, max_length=count)], ...),  # type: ignore[valid-type]
    )


def _child_word(tax: Taxonomy, node: Node) -> str:
    kids = tax.children(node.id)
    levels = {k.level for k in kids if k.level}
    if len(levels) == 1:
        return f"{levels.pop()}s"
    if node.level == "discipline":
        return "subjects"
    if node.level == "subject":
        return "topics"
    return "sub-areas"


def expansion_request(
    tax: Taxonomy,
    node_id: str,
    count: int,
    *,
    temperature: float = 0.7,
    max_tokens: int = 1024,
    sample_index: int = 0,
) -> ChatRequest:
    """The structured-output request for up to ``count`` new children of a node."""
    from builder.llm.schema import schema_for

    node = tax[node_id]
    path = " > ".join(n.name for n in tax.path(node.id))
    word = _child_word(tax, node)
    existing = [c.name for c in tax.children(node.id)]
    lines = [f"We are building a curriculum taxonomy. Node: {path}."]
    if node.description:
        lines.append(f"Description: {node.description}")
    if existing:
        lines.append(f"It already has these {word}: " + "; ".join(existing) + ".")
    lines.append(
        f"Propose {count} more {word} of {node.name} that a complete curriculum would teach"
        + (", different from the existing ones" if existing else "")
        + '. Each needs a short "name" (a few words, title case) and a one-sentence '
        '"description".'
    )
    lines.append('Reply with JSON only: {"children": [{"name": "...", "description": "..."}]}')
    return ChatRequest(
        id=f"expand:{node.id}:{count}:{sample_index}",
        messages=(
            {
                "role": "system",
                "content": "You are an expert curriculum designer who knows how every "
                "academic field is organised.",
            },
            {"role": "user", "content": "\n".join(lines)},
        ),
        params={"temperature": temperature, "max_tokens": max_tokens},
        schema=schema_for(_reply_model(count)),
        sample_index=sample_index,
        metadata={"stage": "expand", "node": node.id, "prompt_version": PROMPT_VERSION},
    )


def _unique_id(base: str, taken: set[str], parent_id: str) -> str:
    from builder.taxonomy import slugify

    slug = slugify(base) or f"{parent_id}-child"
    candidate, n = slug, 2
    while candidate in taken:
        candidate = f"{slug}-{n}"
        n += 1
    return candidate


def expand_node(
    tax: Taxonomy,
    llm: LLM,
    node_id: str,
    *,
    count: int = 8,
    temperature: float = 0.7,
    max_tokens: int = 1024,
    sample: int = 0,
    retries: int = 1,
    dry_run: bool = False,
    threshold: int = FUZZY_THRESHOLD,
) -> ExpandReport:
    """Ask ``llm`` for up to ``count`` children of ``node_id`` and add the new ones as proposed.

    Duplicates (of any name in the taxonomy, or of an earlier proposal) are reported, not
    added. Nodes are inserted through ``TaxonomyEditor`` (comments and layout kept, the result
    validated before anything is written) with the comment ``proposed by <model> on <date>``.
    With ``dry_run`` nothing is written. An invalid reply is retried ``retries`` times with a
    new sample; then ``LLMError`` names the node.
    """
    from builder.taxonomy.edit import DEFAULT_LEVELS, TaxonomyEditor

    if count < 1:
        raise TaxonomyError(f"--count must be at least 1 (got {count})")
    node = tax[node_id]
    model = _reply_model(count)
    errors: list[str] = []
    reply: Any = None
    model_name = llm.model_name
    for attempt in range(retries + 1):
        request = expansion_request(
            tax,
            node.id,
            count,
            temperature=temperature,
            max_tokens=max_tokens,
            sample_index=sample + attempt,
        )
        result = llm.complete(request)
        if not result.ok:
            errors.append(result.error or result.status)
            continue
        try:
            reply = model.model_validate(result.parsed)
        except PydanticValidationError as exc:
            err = exc.errors()[0]
            errors.append(f"{'/'.join(map(str, err['loc']))}: {err['msg']}")
            continue
        model_name = result.model or model_name
        break
    if reply is None:
        raise LLMError(
            f"no valid children proposed for {node.id!r} after {retries + 1} attempt(s): "
            f"{errors[-1] if errors else '?'}",
            hint="try again (new samples are drawn), or raise max_tokens",
        )

    existing: dict[str, str] = {}
    for n in tax:
        existing.setdefault(normalise_name(n.name), n.id)
    taken = set(tax.ids())
    report = ExpandReport(node=node.id, model=model_name, asked=count)
    date = _dt.date.today().isoformat()
    editor = None if dry_run else TaxonomyEditor(tax.root, levels=tax.levels or DEFAULT_LEVELS)
    for child in reply.children:  # type: ignore[attr-defined]
        name = " ".join(child.name.split())
        description = " ".join(child.description.split()) or None
        why = malformed(name, description)
        if why is not None:
            report.proposals.append(Proposal(name, description, "refused", reason=why))
            continue
        dup = find_duplicate(name, existing, threshold)
        if dup is not None:
            report.proposals.append(Proposal(name, description, "duplicate", duplicate_of=dup))
            continue
        new_id = _unique_id(name, taken, node.id)
        taken.add(new_id)
        existing[normalise_name(name)] = new_id
        report.proposals.append(Proposal(name, description, "added", id=new_id))
        if editor is not None:
            report.file = editor.add_node(
                node.id,
                new_id,
                name,
                description=description,
                status="proposed",
                comment=f"proposed by {model_name} on {date}",
            )
    if editor is not None and report.added:
        report.taxonomy = editor.save()
    return report


def proposed_nodes(tax: Taxonomy) -> list[Node]:
    """Nodes with ``status: proposed``, in file order (what ``corpus taxonomy review`` lists)."""
    return [n for n in tax if n.status == "proposed"]


def _expand_ids(tax: Taxonomy, ids: Iterable[str]) -> list[str]:
    out: list[str] = []
    for i in ids:
        node_id = tax[i].id  # UnknownNodeError names close ids
        if node_id not in out:
            out.append(node_id)
    return out


def approve_nodes(tax: Taxonomy, ids: Iterable[str]) -> tuple[list[str], Taxonomy]:
    """Set ``status: approved`` on proposed nodes; returns (messages, the new taxonomy).

    Nodes that are already approved are reported, not an error. A node whose ancestor stays
    proposed is approved but still unused by builds until the ancestor is; the messages say so.
    """
    from builder.taxonomy.edit import DEFAULT_LEVELS, TaxonomyEditor

    wanted = _expand_ids(tax, ids)
    messages: list[str] = []
    to_approve = [i for i in wanted if tax[i].status != "approved"]
    messages.extend(f"{i}: already approved" for i in wanted if i not in to_approve)
    if not to_approve:
        return messages, tax
    editor = TaxonomyEditor(tax.root, levels=tax.levels or DEFAULT_LEVELS)
    editor.set_status(to_approve, "approved")
    new_tax = editor.save()
    approved = set(to_approve)
    for i in to_approve:
        node = new_tax[i]
        messages.append(f"approved {i} ({node.location})")
        waiting = [a.id for a in new_tax.ancestors(i) if a.status != "approved"]
        waiting = [a for a in waiting if a not in approved]
        if waiting:
            messages.append(f"  note: {i} stays unused until {', '.join(waiting)} is approved too")
    return messages, new_tax


def reject_nodes(tax: Taxonomy, ids: Sequence[str]) -> tuple[list[str], Taxonomy]:
    """Remove proposed nodes (with their proposed descendants); returns (messages, taxonomy).

    Refuses, naming the node and writing nothing, to reject an approved node (use
    ``corpus taxonomy remove``), a node with approved descendants, or a node another node
    lists as a prerequisite. A syllabus file left behind by a rejected subject is reported,
    never deleted.
    """
    from builder.syllabus import syllabus_path
    from builder.taxonomy.edit import DEFAULT_LEVELS, TaxonomyEditor

    wanted = _expand_ids(tax, ids)
    problems: list[Problem] = []
    removing: set[str] = set()
    for i in wanted:
        removing.update(n.id for n in tax.subtree(i))
    for i in wanted:
        node = tax[i]
        if node.status != "proposed":
            problems.append(
                Problem(
                    f"{i!r} is approved; reject only removes proposed nodes",
                    node.file,
                    node.line,
                    f"use `corpus taxonomy remove {i}` to delete an approved node",
                )
            )
            continue
        approved = [n.id for n in tax.descendants(i) if n.status == "approved"]
        if approved:
            problems.append(
                Problem(
                    f"{i!r} has approved descendants: {', '.join(approved[:5])}",
                    node.file,
                    node.line,
                    "move or reject them first",
                )
            )
        users = sorted(
            {d.id for n in tax.subtree(i) for d in tax.dependents(n.id) if d.id not in removing}
        )
        if users:
            problems.append(
                Problem(
                    f"{i!r} is a prerequisite of {', '.join(users[:5])}",
                    node.file,
                    node.line,
                    "remove it from their prerequisites first",
                )
            )
    if problems:
        from builder.errors import ValidationError

        raise ValidationError(problems)
    editor = TaxonomyEditor(tax.root, levels=tax.levels or DEFAULT_LEVELS)
    messages: list[str] = []
    for i in wanted:
        if i not in editor:  # already gone with an ancestor rejected earlier in this call
            continue
        removed = editor.remove_node(i, cascade=True)
        extra = f" and {len(removed) - 1} proposed descendant(s)" if len(removed) > 1 else ""
        messages.append(f"rejected {i}{extra} ({tax[i].location})")
        for r in removed:
            path = syllabus_path(tax, r)
            if path.exists():
                messages.append(f"  note: {path} belonged to {r}; delete it if it is unused")
    new_tax = editor.save()
    return messages, new_tax
