"""Syllabus records, which nodes are subjects, and where syllabus files live."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.records import sha256_hex

if TYPE_CHECKING:
    from builder.taxonomy import Node, Taxonomy

__all__ = [
    "PROMPT_VERSION",
    "SESSION_KEYS",
    "SUBJECT_LEVEL",
    "SYLLABI_DIR",
    "SYLLABUS_KEYS",
    "SYLLABUS_STATUSES",
    "Session",
    "Syllabus",
    "is_subject",
    "sessions_sha256",
    "subject_of",
    "subjects",
    "syllabus_files",
    "syllabus_path",
]


PROMPT_VERSION = "syllabus-v1"
SUBJECT_LEVEL = "subject"
SYLLABUS_STATUSES = ("proposed", "approved")
SYLLABUS_KEYS = ("subject", "discipline", "status", "generated_by", "content_sha256", "sessions")
SESSION_KEYS = ("title", "goals", "concepts")
SYLLABI_DIR = "syllabi"

# Length caps sent in the schema: they stop a small model from looping inside one string.
_MAX_TITLE = 120
_MAX_GOAL = 240
_MAX_CONCEPT = 100


# -- records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """One class session: a title, learning goals and the key concepts it teaches."""

    title: str
    goals: tuple[str, ...]
    concepts: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "goals": list(self.goals), "concepts": list(self.concepts)}


@dataclass(frozen=True)
class Syllabus:
    """A subject's syllabus as stored in its YAML file (sessions ordered basic -> advanced)."""

    subject: str
    discipline: str
    status: str
    sessions: tuple[Session, ...]
    generated_by: dict[str, Any] | None = None
    content_sha256: str | None = None
    file: Path | None = None

    @property
    def edited(self) -> bool:
        """True when the sessions differ from what was generated (a curator changed them)."""
        if self.content_sha256 is None:
            return True  # written by hand
        return sessions_sha256(self.sessions) != self.content_sha256

    @property
    def protected(self) -> bool:
        """True when regeneration must not overwrite it without ``force``."""
        return self.status == "approved" or self.edited


def sessions_sha256(sessions: Iterable[Session | Mapping[str, Any]]) -> str:
    """sha256 of the sessions' titles, goals and concepts (what ``content_sha256`` records)."""
    plain = []
    for s in sessions:
        d = s.to_dict() if isinstance(s, Session) else s
        plain.append(
            {
                "title": d.get("title"),
                "goals": list(d.get("goals") or []),
                "concepts": list(d.get("concepts") or []),
            }
        )
    return sha256_hex(plain)


# -- which nodes are subjects -----------------------------------------------------------------


def _uses_subject_level(tax: Taxonomy, discipline_id: str) -> bool:
    cache = _subject_level_cache(tax)
    if discipline_id not in cache:
        cache[discipline_id] = any(
            (n.level or "").lower() == SUBJECT_LEVEL for n in tax.subtree(discipline_id)
        )
    return cache[discipline_id]


# Memo per taxonomy (taxonomies are immutable once loaded), held beside the caller's object
# rather than on it, so the O(nodes) scan happens once per discipline however many nodes ask.
_SUBJECT_LEVEL: weakref.WeakKeyDictionary[Taxonomy, dict[str, bool]] = weakref.WeakKeyDictionary()


def _subject_level_cache(tax: Taxonomy) -> dict[str, bool]:
    return _SUBJECT_LEVEL.setdefault(tax, {})


def is_subject(tax: Taxonomy, node_id: str) -> bool:
    """True if the node owns a syllabus under the subject rule (see the module docstring)."""
    node = tax[node_id]
    if _uses_subject_level(tax, tax.discipline_of(node.id).id):
        return (node.level or "").lower() == SUBJECT_LEVEL
    if not node.children:
        return node.parent is None
    return any(not tax[c].children for c in node.children)


def subject_of(tax: Taxonomy, node_id: str) -> Node | None:
    """The subject a node belongs to (itself included), or ``None`` above the subject level."""
    node = tax[node_id]
    if _uses_subject_level(tax, tax.discipline_of(node.id).id):
        current: Node | None = node
        while current is not None:
            if (current.level or "").lower() == SUBJECT_LEVEL:
                return current
            current = tax[current.parent] if current.parent is not None else None
        return None
    if not node.children:
        return tax[node.parent] if node.parent is not None else node
    return node if any(not tax[c].children for c in node.children) else None


def subjects(tax: Taxonomy, under: str | None = None) -> list[Node]:
    """Every subject of the taxonomy (or of one subtree), in file order."""
    nodes = tax.subtree(under) if under is not None else list(tax)
    return [n for n in nodes if is_subject(tax, n.id)]


# -- files ------------------------------------------------------------------------------------


def syllabus_path(tax: Taxonomy, subject_id: str) -> Path:
    """Where a subject's syllabus lives: ``<taxonomy>/<discipline>/syllabi/<subject>.yaml``
    (or the ``.yml`` file, when only that one exists)."""
    discipline = tax.discipline_of(subject_id).id
    path = Path(tax.root) / discipline / SYLLABI_DIR / f"{tax[subject_id].id}.yaml"
    if not path.exists() and path.with_suffix(".yml").exists():
        return path.with_suffix(".yml")
    return path


def syllabus_files(tax: Taxonomy) -> list[Path]:
    """Every syllabus file under the taxonomy directory (``*/syllabi/*.yaml|yml``), sorted."""
    root = Path(tax.root)
    if not root.is_dir():
        return []
    found: list[Path] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        sdir = sub / SYLLABI_DIR
        if sdir.is_dir():
            found.extend(
                sorted(
                    p
                    for p in sdir.iterdir()
                    if p.suffix in (".yaml", ".yml") and p.is_file() and not p.name.startswith(".")
                )
            )
    return found


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _status_ok(tax: Taxonomy, node_id: str, statuses: Sequence[str]) -> bool:
    return all(n.status in statuses for n in tax.path(node_id))
