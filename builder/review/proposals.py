"""Proposed taxonomy nodes and syllabi for the review pages, and the curator's decisions.

Every write goes through the code the CLI uses, so a decision in the browser changes the YAML
exactly as the matching command would (comments and order kept, the result validated before
anything is written, files replaced atomically):

- approve / reject nodes: ``builder.growth.approve_nodes`` / ``reject_nodes``
  (``corpus taxonomy approve|reject``);
- edit a node's name, description, level or weight: ``builder.taxonomy.edit.TaxonomyEditor``
  (``corpus taxonomy rename`` and friends);
- approve a syllabus: ``builder.syllabus.approve_syllabus`` (``corpus syllabus approve``);
- edit a session of a proposed syllabus (title, goals, concepts):
  ``builder.syllabus.write.edit_session``, the round-trip edit a curator makes by hand in the
  file (the CLI has no command for it), validated like ``corpus syllabus approve`` validates.

Rejecting a syllabus has no CLI twin: the proposed file is moved (atomically, never deleted)
to ``<discipline>/syllabi/.rejected/<subject>.yaml``, where neither builds nor validation
look. The subject then has no syllabus; ``corpus syllabus generate ID --sample N`` asks the
model for a different one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.errors import Problem, TaxonomyError, ValidationError

__all__ = [
    "EDITABLE_FIELDS",
    "NodeProposal",
    "SyllabusProposal",
    "approve_nodes",
    "approve_syllabi",
    "edit_node",
    "edit_syllabus_session",
    "node_proposals",
    "reject_nodes",
    "reject_syllabi",
    "syllabus_proposals",
]

#: Node fields a curator may edit from the review page.
EDITABLE_FIELDS: tuple[str, ...] = ("name", "description", "level", "weight")
REJECTED_DIR = ".rejected"


@dataclass
class NodeProposal:
    """A proposed node with the context a curator decides on: where it would sit and what
    is already there."""

    id: str
    name: str
    description: str | None
    level: str | None
    weight: float
    location: str
    path: list[tuple[str, str]]  # (id, name) from the discipline down to the parent
    siblings: list[tuple[str, str, str]]  # (id, name, status) of the parent's other children
    children: list[str]  # proposed descendants that go with it


@dataclass
class SyllabusProposal:
    """A proposed syllabus (or a file that cannot be read, with its problems)."""

    subject: str
    subject_name: str
    path: list[tuple[str, str]]
    file: str
    sessions: list[dict[str, Any]] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    generated_by: dict[str, Any] | None = None
    edited: bool = False
    problems: list[str] = field(default_factory=list)


def node_proposals(tax: Any) -> list[NodeProposal]:
    """Every proposed node, in file order (as ``corpus taxonomy review`` lists them)."""
    from builder.growth import proposed_nodes

    out = []
    for n in proposed_nodes(tax):
        parent = tax.parent(n.id)
        siblings = (
            [(c.id, c.name, c.status) for c in tax.children(parent.id) if c.id != n.id]
            if parent is not None
            else [(r.id, r.name, r.status) for r in tax.roots() if r.id != n.id]
        )
        out.append(
            NodeProposal(
                id=n.id,
                name=n.name,
                description=n.description,
                level=n.level,
                weight=n.weight,
                location=n.location,
                path=[(a.id, a.name) for a in tax.ancestors(n.id)],
                siblings=siblings,
                children=[d.id for d in tax.descendants(n.id)],
            )
        )
    return out


def syllabus_proposals(tax: Any, settings: Any = None) -> list[SyllabusProposal]:
    """Every syllabus file with ``status: proposed`` (and every unreadable one)."""
    from builder.syllabus import load_syllabus, subjects, syllabus_path

    out = []
    for node in subjects(tax):
        path = syllabus_path(tax, node.id)
        if not path.exists():
            continue
        base = SyllabusProposal(
            subject=node.id,
            subject_name=node.name,
            path=[(a.id, a.name) for a in tax.ancestors(node.id)],
            file=str(path),
            topics=[leaf.name for leaf in tax.leaves(node.id) if leaf.id != node.id],
        )
        try:
            syllabus = load_syllabus(tax, node.id, settings)
        except ValidationError as exc:
            base.problems = [str(p) for p in exc.problems]
            out.append(base)
            continue
        if syllabus is None or syllabus.status != "proposed":
            continue
        base.sessions = [s.to_dict() for s in syllabus.sessions]
        base.generated_by = dict(syllabus.generated_by or {})
        base.edited = syllabus.edited
        out.append(base)
    return out


def _known(tax: Any, ids: list[str], what: str) -> list[str]:
    out = []
    for i in ids:
        if i not in tax:
            raise TaxonomyError(f"unknown {what} {i!r}", hint="reload the page")
        out.append(tax[i].id)
    return out


def approve_nodes(tax: Any, ids: list[str]) -> list[str]:
    """Approve proposed nodes (``corpus taxonomy approve``); returns its messages."""
    from builder.growth import approve_nodes as approve

    messages, _ = approve(tax, _known(tax, ids, "node"))
    return messages


def reject_nodes(tax: Any, ids: list[str]) -> list[str]:
    """Remove proposed nodes (``corpus taxonomy reject``); returns its messages."""
    from builder.growth import reject_nodes as reject

    messages, _ = reject(tax, _known(tax, ids, "node"))
    return messages


def edit_node(tax: Any, node_id: str, values: dict[str, str], levels: Any = None) -> list[str]:
    """Set a proposed node's editable fields from form strings; validated, then written.

    An empty description removes it; ``weight`` must be a positive number. Returns the
    editor's change lines (empty when nothing changed).
    """
    from builder.taxonomy.edit import TaxonomyEditor

    node = tax[_known(tax, [node_id], "node")[0]]
    if node.status != "proposed":
        raise TaxonomyError(
            f"{node.id!r} is approved; the review app edits proposed nodes only",
            file=node.file,
            line=node.line,
            hint=f"edit {node.file} or use `corpus taxonomy rename`",
        )
    unknown = sorted(set(values) - set(EDITABLE_FIELDS))
    if unknown:
        raise TaxonomyError(
            f"cannot edit {', '.join(unknown)}", hint="editable: name, description, level, weight"
        )
    editor = TaxonomyEditor(tax.root, **({"levels": levels} if levels else {}))
    name = values.get("name")
    if name is not None and name.strip() != node.name:
        editor.rename_node(node.id, name.strip())
    fields: dict[str, Any] = {}
    if "description" in values and (values["description"].strip() or None) != node.description:
        fields["description"] = values["description"].strip() or None
    if "level" in values and (values["level"].strip() or None) != node.level:
        fields["level"] = values["level"].strip() or None
    if "weight" in values and values["weight"].strip():
        try:
            weight = float(values["weight"])
        except ValueError:
            raise TaxonomyError(
                f"weight of {node.id!r} must be a number, not {values['weight']!r}",
                hint="for example 1 or 0.5",
            ) from None
        if weight != node.weight:
            fields["weight"] = int(weight) if weight.is_integer() else weight
    if fields:
        editor.set_fields(node.id, **fields)
    if not editor.changes:
        return []
    editor.save()
    return list(editor.changes)


def approve_syllabi(tax: Any, ids: list[str], settings: Any = None) -> list[str]:
    """Approve syllabi (``corpus syllabus approve``); returns one message per file."""
    from builder.syllabus import approve_syllabus

    return [
        f"approved {approve_syllabus(tax, sid, settings)}" for sid in _known(tax, ids, "subject")
    ]


def edit_syllabus_session(
    tax: Any, subject_id: str, number: int, form: dict[str, str], settings: Any = None
) -> list[str]:
    """Set a proposed syllabus's session ``number`` from form strings: ``title`` as given,
    ``goals`` and ``concepts`` one per line. Returns the change lines (empty: no change)."""
    from builder.syllabus.write import SESSION_FIELDS, edit_session

    sid = _known(tax, [subject_id], "subject")[0]
    values: dict[str, str | list[str]] = {}
    for name in SESSION_FIELDS:
        if name in form:
            raw = form[name]
            values[name] = raw if name == "title" else raw.splitlines()
    return edit_session(tax, sid, number, values, settings)


def reject_syllabi(tax: Any, ids: list[str]) -> list[str]:
    """Move proposed syllabi aside to ``syllabi/.rejected/`` (never an approved one)."""
    from builder.syllabus import load_syllabus, syllabus_path

    problems: list[Problem] = []
    paths: list[tuple[str, Path]] = []
    for sid in _known(tax, ids, "subject"):
        path = syllabus_path(tax, sid)
        if not path.exists():
            problems.append(Problem(f"{sid!r} has no syllabus", path, None, "reload the page"))
            continue
        try:
            syllabus = load_syllabus(tax, sid)
        except ValidationError:
            syllabus = None  # an unreadable proposal can be rejected too
        if syllabus is not None and syllabus.status == "approved":
            problems.append(
                Problem(
                    f"the syllabus of {sid!r} is approved; only proposed syllabi are rejected",
                    path,
                    None,
                    "edit or delete the file by hand",
                )
            )
            continue
        paths.append((sid, path))
    if problems:
        raise ValidationError(problems)
    messages = []
    for sid, path in paths:
        target = path.parent / REJECTED_DIR / path.name
        target.parent.mkdir(exist_ok=True)
        os.replace(path, target)
        messages.append(f"rejected the syllabus of {sid}: moved to {target}")
    return messages
