"""Writing syllabus files (round-trip YAML that keeps a curator's comments) and rendering them."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.errors import Problem, TaxonomyError, ValidationError
from builder.settings.syllabus import SyllabusSettings
from builder.syllabus.check import _load_file
from builder.syllabus.model import Session, Syllabus, _display, sessions_sha256, syllabus_path

if TYPE_CHECKING:
    from builder.taxonomy import Taxonomy

__all__ = ["SESSION_FIELDS", "approve_syllabus", "edit_session", "render_syllabus"]


# -- writing ----------------------------------------------------------------------------------


def _yaml() -> Any:
    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip: keeps a curator's comments and order
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    yaml.preserve_quotes = True
    return yaml


def _syllabus_text(
    tax: Taxonomy,
    subject_id: str,
    sessions: Sequence[Session],
    generated_by: Mapping[str, Any],
    status: str = "proposed",
) -> str:
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    node = tax[subject_id]
    doc = CommentedMap()
    doc["subject"] = node.id
    doc["discipline"] = tax.discipline_of(node.id).id
    doc["status"] = status
    doc["generated_by"] = CommentedMap(generated_by)
    doc["content_sha256"] = sessions_sha256(sessions)
    seq = CommentedSeq()
    for s in sessions:
        m = CommentedMap()
        m["title"] = s.title
        m["goals"] = CommentedSeq(s.goals)
        m["concepts"] = CommentedSeq(s.concepts)
        seq.append(m)
    doc["sessions"] = seq
    doc.yaml_set_start_comment(
        f"Syllabus of {node.name} ({tax.path_ids(node.id)}), sessions ordered basic -> "
        f"advanced.\nEdit freely (edits are kept: regeneration will not overwrite them), then "
        f"approve it:\n  corpus syllabus approve {node.id}"
    )
    buf = io.StringIO()
    _yaml().dump(doc, buf)
    return buf.getvalue()


def approve_syllabus(
    tax: Taxonomy, subject_id: str, settings: SyllabusSettings | None = None
) -> Path:
    """Mark a subject's syllabus approved (after validating it); comments and edits are kept.

    Returns the file's path. Raises ``TaxonomyError`` when the subject has no syllabus and
    ``ValidationError`` when the file is invalid (fix it first).
    """
    from builder.taxonomy.files import atomic_write_text

    settings = settings or SyllabusSettings()
    node = tax[subject_id]
    path = _existing_syllabus(tax, node.id)
    _syllabus, problems = _load_file(path, tax, settings)
    if problems:
        raise ValidationError(problems)
    yaml = _yaml()
    doc = yaml.load(path.read_text(encoding="utf-8"))
    if doc.get("status") == "approved":
        return path
    if "status" in doc:
        doc["status"] = "approved"
    else:
        doc.insert(min(2, len(doc)), "status", "approved")
    buf = io.StringIO()
    yaml.dump(doc, buf)
    atomic_write_text(path, buf.getvalue())
    return path


#: Fields of one session a curator may set with ``edit_session``.
SESSION_FIELDS: tuple[str, ...] = ("title", "goals", "concepts")


def edit_session(
    tax: Taxonomy,
    subject_id: str,
    number: int,
    values: Mapping[str, str | Sequence[str]],
    settings: SyllabusSettings | None = None,
) -> list[str]:
    """Set fields of session ``number`` (1-based) of a proposed syllabus, as a curator
    editing the file would: round-trip YAML (comments, order and ``content_sha256`` kept, so
    the file then counts as edited and regeneration leaves it alone), the whole result
    validated before anything is written, then replaced atomically.

    ``values`` maps ``title`` to a string and ``goals``/``concepts`` to lists of strings.
    Returns one line per changed field (empty when nothing changed). Raises
    ``TaxonomyError`` for a missing file, an approved syllabus or an unknown session or
    field, and ``ValidationError`` when the edited syllabus would be invalid.
    """
    from ruamel.yaml.comments import CommentedSeq

    from builder.syllabus.check import _check_document
    from builder.taxonomy.files import atomic_write_text
    from builder.taxonomy.parse import parse_yaml

    settings = settings or SyllabusSettings()
    node = tax[subject_id]
    path = _existing_syllabus(tax, node.id)
    unknown = sorted(set(values) - set(SESSION_FIELDS))
    if unknown:
        raise TaxonomyError(
            f"cannot edit {', '.join(unknown)} of a session",
            hint=f"editable: {', '.join(SESSION_FIELDS)}",
        )
    yaml = _yaml()
    doc = yaml.load(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or doc.get("status") != "proposed":
        raise TaxonomyError(
            f"the syllabus of {node.id!r} is not proposed; only proposed syllabi are edited here",
            file=path,
            hint=f"edit {_display(path)} by hand",
        )
    sessions = doc.get("sessions")
    if not isinstance(sessions, list) or not 1 <= number <= len(sessions):
        count = len(sessions) if isinstance(sessions, list) else 0
        raise TaxonomyError(
            f"the syllabus of {node.id!r} has no session {number}",
            file=path,
            hint=f"sessions are numbered 1 to {count}",
        )
    session = sessions[number - 1]
    if not isinstance(session, dict):
        raise TaxonomyError(
            f"session {number} of the syllabus of {node.id!r} is not a mapping",
            file=path,
            hint=f"fix {_display(path)} by hand (see `corpus taxonomy validate`)",
        )
    changes: list[str] = []
    for name in SESSION_FIELDS:
        if name not in values:
            continue
        value = values[name]
        if name == "title":
            new: Any = str(value).strip()
            if session.get(name) != new:
                session[name] = new
                changes.append(f"session {number}: title -> {new!r}")
        else:
            items = [str(v).strip() for v in value if str(v).strip()]
            if list(session.get(name) or []) != items:
                session[name] = CommentedSeq(items)
                changes.append(f"session {number}: {name} -> {'; '.join(items)}")
    if not changes:
        return []
    buf = io.StringIO()
    yaml.dump(doc, buf)
    text = buf.getvalue()
    data, dups = parse_yaml(text)
    _syllabus, problems = _check_document(data, path, tax, settings)
    if dups or problems:
        raise ValidationError(problems or [Problem(msg, path, line) for line, msg in dups])
    atomic_write_text(path, text)
    return changes


def render_syllabus(syllabus: Syllabus, tax: Taxonomy | None = None) -> str:
    """A syllabus as readable text (``corpus syllabus show``)."""
    name = syllabus.subject
    header = name
    if tax is not None and syllabus.subject in tax:
        node = tax[syllabus.subject]
        header = f"{node.name} ({tax.path_ids(node.id)})"
    state = syllabus.status + (", edited by a curator" if syllabus.edited else "")
    lines = [f"{header}: {len(syllabus.sessions)} sessions [{state}]"]
    if syllabus.file is not None:
        lines.append(f"file: {_display(syllabus.file)}")
    if syllabus.generated_by:
        g = syllabus.generated_by
        lines.append(f"generated by {g.get('model', '?')} on {g.get('created_at', '?')}")
    width = len(str(len(syllabus.sessions)))
    for i, s in enumerate(syllabus.sessions, 1):
        lines.append("")
        lines.append(f"{i:>{width}}. {s.title}")
        pad = " " * (width + 2)
        for goal in s.goals:
            lines.append(f"{pad}goal: {goal}")
        lines.append(f"{pad}concepts: {', '.join(s.concepts)}")
    return "\n".join(lines) + "\n"


def _existing_syllabus(tax: Taxonomy, subject_id: str) -> Path:
    """The subject's syllabus file; ``TaxonomyError`` naming the fix when there is none."""
    path = syllabus_path(tax, subject_id)
    if not path.exists():
        raise TaxonomyError(
            f"{subject_id!r} has no syllabus ({_display(path)} does not exist)",
            hint=f"generate one with `corpus syllabus generate {subject_id}`",
        )
    return path
