"""GLAN-style syllabi: one per subject, made of class sessions with key concepts.

GLAN ("Synthetic Data (Almost) from Scratch", Li et al. 2024) gets broad, deliberate coverage
by asking a model for a syllabus per subject (ordered class sessions, each with key concepts)
and then generating from sampled sessions and concepts instead of whatever the model drifts
to. This module owns the syllabus files; ``builder.walk`` samples from them.

Files live next to the taxonomy, one per subject, and are curator-editable YAML::

    taxonomy/<discipline_id>/syllabi/<subject_id>.yaml

    subject: calculus
    discipline: mathematics
    status: proposed            # proposed | approved (corpus syllabus approve calculus)
    generated_by: {model: ..., request_sha256: ..., prompt_version: syllabus-v1, ...}
    content_sha256: ...         # hash of the sessions as generated: detects curator edits
    sessions:                   # basic -> advanced
      - title: Limits
        goals: [Compute limits of elementary functions]
        concepts: [epsilon-delta definition, one-sided limits, squeeze theorem]

Regeneration never overwrites a syllabus that is approved, or whose sessions no longer hash to
``content_sha256`` (a curator edited it), unless ``force=True``.

**Which nodes are subjects.** In a discipline where some node has ``level: subject`` (the
starter taxonomy), the subjects are exactly those nodes, and a node's subject is its nearest
ancestor-or-self with that level. In a discipline without that level name (imported
taxonomies), the subjects are the parents of leaves (and a discipline that is itself a leaf);
a node's subject is then the node itself when it has a leaf child, else its parent for a leaf.
``subject_of`` returns ``None`` for nodes above the subject level.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import io
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic import ValidationError as PydanticValidationError

from builder.errors import Problem, TaxonomyError, ValidationError
from builder.records import ChatRequest, ChatResult, sha256_hex
from builder.settings.syllabus import SyllabusSettings

if TYPE_CHECKING:
    from builder.llm.base import LLM
    from builder.taxonomy import Node, Taxonomy

__all__ = [
    "PROMPT_VERSION",
    "SUBJECT_LEVEL",
    "SYLLABUS_STATUSES",
    "Session",
    "Syllabus",
    "SyllabusOutcome",
    "SyllabusReport",
    "approve_syllabus",
    "generate_syllabi",
    "is_subject",
    "load_syllabi",
    "load_syllabus",
    "render_syllabus",
    "sessions_sha256",
    "subject_of",
    "subjects",
    "syllabus_files",
    "syllabus_path",
    "syllabus_request",
    "validate_syllabi",
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


# -- parsing and checking ---------------------------------------------------------------------


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _key_line(m: Any, key: str, default: int | None) -> int | None:
    lines = getattr(m, "key_lines", None)
    return lines.get(key, default) if lines else default


def _item_line(s: Any, i: int, default: int | None) -> int | None:
    lines = getattr(s, "item_lines", None)
    return lines[i] if lines and i < len(lines) else default


def _string_list(
    value: Any, what: str, file: Path, line: int | None, problems: list[Problem]
) -> list[str] | None:
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(
            Problem(f"{what} must be a list of text, not {_type_name(value)}", file, line)
        )
        return None
    out: list[str] = []
    for i, item in enumerate(value):
        item_line = _item_line(value, i, line)
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            item = str(item)
        if not isinstance(item, str) or not item.strip():
            problems.append(Problem(f"{what} item {i + 1} must be non-empty text", file, item_line))
            continue
        if not _looks_like_words(item):
            problems.append(
                Problem(
                    f"{what} item {i + 1} is not words: {item.strip()[:40]!r}",
                    file,
                    item_line,
                    "write it in words (at least one letter)",
                )
            )
            continue
        out.append(item.strip())
    return out


def _check_document(
    data: Any,
    file: Path,
    tax: Taxonomy,
    settings: SyllabusSettings,
) -> tuple[Syllabus | None, list[Problem]]:
    """Check one parsed syllabus file; returns the syllabus (if usable) and every problem."""
    problems: list[Problem] = []
    if data is None:
        return None, [Problem("file is empty", file, 1, "delete it or regenerate it")]
    if not isinstance(data, dict):
        return None, [
            Problem(
                f"a syllabus file must be one mapping (subject, status, sessions), not "
                f"{_type_name(data)}",
                file,
                getattr(data, "line", 1),
            )
        ]
    top_line = getattr(data, "line", 1)
    for key in data:
        if key not in SYLLABUS_KEYS:
            close = difflib.get_close_matches(str(key), SYLLABUS_KEYS, n=1)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else f"valid keys: {', '.join(SYLLABUS_KEYS)}"
            )
            problems.append(
                Problem(f"unknown key {key!r}", file, _key_line(data, key, top_line), hint)
            )

    subject = data.get("subject")
    subject_line = _key_line(data, "subject", top_line)
    subject_ok = False
    if not isinstance(subject, str) or not subject:
        problems.append(
            Problem(
                "missing 'subject' (the subject's taxonomy id)",
                file,
                subject_line,
                f"add `subject: {file.stem}`",
            )
        )
        subject = file.stem
    elif subject not in tax:
        close = difflib.get_close_matches(subject, tax.ids(), n=3, cutoff=0.6)
        problems.append(
            Problem(
                f"subject {subject!r} is not in the taxonomy",
                file,
                subject_line,
                f"did you mean {', '.join(close)}?" if close else "delete the file or fix the id",
            )
        )
    else:
        subject_ok = True
        if file.stem != subject:
            problems.append(
                Problem(
                    f"the file of subject {subject!r} must be named {subject}.yaml",
                    file,
                    subject_line,
                    "rename the file",
                )
            )
        expected_dir = tax.discipline_of(subject).id
        if file.parent.name != SYLLABI_DIR or file.parent.parent.name != expected_dir:
            problems.append(
                Problem(
                    f"subject {subject!r} belongs to discipline {expected_dir!r}",
                    file,
                    subject_line,
                    f"move the file to {expected_dir}/{SYLLABI_DIR}/{subject}.yaml",
                )
            )
        if not is_subject(tax, subject):
            node = tax[subject]
            problems.append(
                Problem(
                    f"{subject!r} is not a subject (level {node.level!r}); syllabi belong to "
                    f"subjects and the walker ignores this one",
                    file,
                    subject_line,
                    "attach the syllabus to the node's subject, or set `level: subject` on it",
                )
            )

    discipline = data.get("discipline")
    if discipline is not None and subject_ok:
        expected = tax.discipline_of(subject).id
        if discipline != expected:
            problems.append(
                Problem(
                    f"discipline {discipline!r} does not match the taxonomy ({expected!r})",
                    file,
                    _key_line(data, "discipline", top_line),
                    f"set `discipline: {expected}`",
                )
            )
    elif discipline is None and subject_ok:
        discipline = tax.discipline_of(subject).id

    status = data.get("status", "proposed")
    if status not in SYLLABUS_STATUSES:
        problems.append(
            Problem(
                f"status must be proposed or approved, not {status!r}",
                file,
                _key_line(data, "status", top_line),
            )
        )

    generated_by = data.get("generated_by")
    if generated_by is not None and not isinstance(generated_by, dict):
        problems.append(
            Problem(
                f"generated_by must be a mapping, not {_type_name(generated_by)}",
                file,
                _key_line(data, "generated_by", top_line),
            )
        )
        generated_by = None
    content_sha = data.get("content_sha256")
    if content_sha is not None and not isinstance(content_sha, str):
        problems.append(
            Problem(
                "content_sha256 must be text",
                file,
                _key_line(data, "content_sha256", top_line),
                "delete the line",
            )
        )
        content_sha = None

    sessions_raw = data.get("sessions")
    sessions_line = _key_line(data, "sessions", top_line)
    sessions: list[Session] = []
    if not isinstance(sessions_raw, list) or not sessions_raw:
        problems.append(
            Problem(
                "a syllabus needs a non-empty list of sessions"
                if sessions_raw is None or sessions_raw == []
                else f"sessions must be a list, not {_type_name(sessions_raw)}",
                file,
                sessions_line,
                "add `sessions:` with items `- title: ...`, `goals: [...]`, `concepts: [...]`",
            )
        )
        sessions_raw = []
    lo, hi = settings.min_concepts, settings.max_concepts
    for i, raw in enumerate(sessions_raw):
        line = _item_line(sessions_raw, i, sessions_line)
        where = f"session {i + 1}"
        if not isinstance(raw, dict):
            problems.append(
                Problem(f"{where} must be a mapping (title, goals, concepts)", file, line)
            )
            continue
        line = getattr(raw, "line", line)
        for key in raw:
            if key not in SESSION_KEYS:
                problems.append(
                    Problem(
                        f"{where}: unknown key {key!r}",
                        file,
                        _key_line(raw, key, line),
                        f"valid keys: {', '.join(SESSION_KEYS)}",
                    )
                )
        title = raw.get("title")
        if isinstance(title, (int, float)) and not isinstance(title, bool):
            title = str(title)
        if not isinstance(title, str) or not title.strip():
            problems.append(Problem(f"{where} needs a non-empty title", file, line))
            title = ""
        goals = _string_list(
            raw.get("goals"), f"{where} goals", file, _key_line(raw, "goals", line), problems
        )
        concepts = _string_list(
            raw.get("concepts"),
            f"{where} concepts",
            file,
            _key_line(raw, "concepts", line),
            problems,
        )
        if concepts is not None and not lo <= len(concepts) <= hi:
            problems.append(
                Problem(
                    f"{where} has {len(concepts)} key concept(s); between {lo} and {hi} are "
                    f"allowed",
                    file,
                    _key_line(raw, "concepts", line),
                    "edit the list, or change [syllabus] min_concepts/max_concepts",
                )
            )
        sessions.append(Session(title.strip(), tuple(goals or ()), tuple(concepts or ())))

    if problems:
        return None, problems
    return (
        Syllabus(
            subject=subject,
            discipline=str(discipline),
            status=status,
            sessions=tuple(sessions),
            generated_by=dict(generated_by) if generated_by else None,
            content_sha256=content_sha,
            file=file,
        ),
        problems,
    )


def _read(file: Path) -> tuple[Any, list[Problem]]:
    from builder.taxonomy.parse import YamlSyntaxError, parse_yaml

    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return None, [Problem(f"file is not UTF-8 text ({exc.reason})", file, 1)]
    except OSError as exc:
        return None, [Problem(f"cannot read file: {exc.strerror}", file)]
    try:
        data, dups = parse_yaml(text)
    except YamlSyntaxError as exc:
        return None, [Problem(exc.message, file, exc.line)]
    return data, [Problem(msg, file, line, "keep one of them") for line, msg in dups]


def _load_file(
    file: Path, tax: Taxonomy, settings: SyllabusSettings
) -> tuple[Syllabus | None, list[Problem]]:
    data, problems = _read(file)
    if problems and data is None:
        return None, problems
    syllabus, more = _check_document(data, file, tax, settings)
    problems = problems + more
    return (syllabus if not problems else None), problems


def load_syllabus(
    tax: Taxonomy, subject_id: str, settings: SyllabusSettings | None = None
) -> Syllabus | None:
    """The subject's syllabus, or ``None`` when it has none.

    Raises ``ValidationError`` (every problem as file:line) when the file exists but is invalid,
    and ``UnknownNodeError`` for an id that is not in the taxonomy.
    """
    settings = settings or SyllabusSettings()
    path = syllabus_path(tax, subject_id)
    if not path.exists():
        return None
    syllabus, problems = _load_file(path, tax, settings)
    if problems:
        raise ValidationError(problems)
    return syllabus


def load_syllabi(
    tax: Taxonomy,
    subject_ids: Iterable[str] | None = None,
    settings: SyllabusSettings | None = None,
    *,
    statuses: Sequence[str] = SYLLABUS_STATUSES,
) -> dict[str, Syllabus]:
    """Syllabi by subject id (of ``subject_ids``, or every file), keeping those in ``statuses``.

    The directory is listed once, so asking for thousands of subjects costs one file read per
    syllabus that exists. Invalid files raise ``ValidationError`` listing every problem.
    """
    settings = settings or SyllabusSettings()
    files = {p.stem: p for p in syllabus_files(tax)}
    wanted = list(files) if subject_ids is None else list(subject_ids)
    out: dict[str, Syllabus] = {}
    problems: list[Problem] = []
    for sid in wanted:
        path = files.get(sid)
        if path is None:
            continue
        syllabus, found = _load_file(path, tax, settings)
        problems.extend(found)
        if syllabus is not None and syllabus.status in statuses:
            out[sid] = syllabus
    if problems:
        raise ValidationError(problems)
    return out


def validate_syllabi(tax: Taxonomy, settings: SyllabusSettings | None = None) -> list[Problem]:
    """Every problem in every syllabus file of the taxonomy, as file:line ``Problem``s.

    Checks YAML syntax, unknown keys, that the subject exists, is a subject and sits in its
    discipline's folder, the status, non-empty sessions with titles, and concept counts
    within ``settings.min_concepts``-``max_concepts``. ``corpus taxonomy validate`` calls it.
    """
    settings = settings or SyllabusSettings()
    problems: list[Problem] = []
    seen: dict[str, Path] = {}
    for file in syllabus_files(tax):
        if file.stem in seen:
            problems.append(
                Problem(
                    f"second syllabus for {file.stem!r} (also {seen[file.stem]})",
                    file,
                    1,
                    "keep one of them",
                )
            )
            continue
        seen[file.stem] = file
        problems.extend(_load_file(file, tax, settings)[1])
    return problems


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
    path = syllabus_path(tax, node.id)
    if not path.exists():
        raise TaxonomyError(
            f"{node.id!r} has no syllabus ({_display(path)} does not exist)",
            hint=f"generate one with `corpus syllabus generate {node.id}`",
        )
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


def _looks_like_words(text: str) -> bool:
    """The one check for titles, goals and concepts, generated or hand-written: at least one
    letter, and mostly letters or digits (small models leak JSON punctuation such as ``]},{``
    or ``'], ['`` into strings; such a syllabus would steer generation with noise). ``C``,
    ``3D`` and ``pH`` pass; ``1`` and ``], [`` do not."""
    stripped = text.strip()
    if not any(ch.isalpha() for ch in stripped):
        return False
    wordy = sum(ch.isalnum() for ch in stripped)
    return wordy >= 0.6 * sum(not ch.isspace() for ch in stripped)


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


def _status_ok(tax: Taxonomy, node_id: str, statuses: Sequence[str]) -> bool:
    return all(n.status in statuses for n in tax.path(node_id))
