"""Reading and checking syllabus files (every problem as ``file:line``), and loading them."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.errors import Problem, ValidationError
from builder.settings.syllabus import SyllabusSettings
from builder.syllabus.model import (
    SESSION_KEYS,
    SYLLABI_DIR,
    SYLLABUS_KEYS,
    SYLLABUS_STATUSES,
    Session,
    Syllabus,
    is_subject,
    syllabus_files,
    syllabus_path,
)
from builder.util.yamlcheck import item_line, key_line, type_name, unknown_key_hint

if TYPE_CHECKING:
    from builder.taxonomy import Taxonomy

__all__ = ["load_syllabi", "load_syllabus", "validate_syllabi"]


# -- parsing and checking ---------------------------------------------------------------------


def _string_list(
    value: Any, what: str, file: Path, line: int | None, problems: list[Problem]
) -> list[str] | None:
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(
            Problem(f"{what} must be a list of text, not {type_name(value)}", file, line)
        )
        return None
    out: list[str] = []
    for i, item in enumerate(value):
        line_of_item = item_line(value, i, line)
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            item = str(item)
        if not isinstance(item, str) or not item.strip():
            problems.append(
                Problem(f"{what} item {i + 1} must be non-empty text", file, line_of_item)
            )
            continue
        if not _looks_like_words(item):
            problems.append(
                Problem(
                    f"{what} item {i + 1} is not words: {item.strip()[:40]!r}",
                    file,
                    line_of_item,
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
                f"{type_name(data)}",
                file,
                getattr(data, "line", 1),
            )
        ]
    top_line = getattr(data, "line", 1)
    for key in data:
        if key not in SYLLABUS_KEYS:
            hint = unknown_key_hint(key, SYLLABUS_KEYS)
            problems.append(
                Problem(f"unknown key {key!r}", file, key_line(data, key, top_line), hint)
            )

    subject = data.get("subject")
    subject_line = key_line(data, "subject", top_line)
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
                    key_line(data, "discipline", top_line),
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
                key_line(data, "status", top_line),
            )
        )

    generated_by = data.get("generated_by")
    if generated_by is not None and not isinstance(generated_by, dict):
        problems.append(
            Problem(
                f"generated_by must be a mapping, not {type_name(generated_by)}",
                file,
                key_line(data, "generated_by", top_line),
            )
        )
        generated_by = None
    content_sha = data.get("content_sha256")
    if content_sha is not None and not isinstance(content_sha, str):
        problems.append(
            Problem(
                "content_sha256 must be text",
                file,
                key_line(data, "content_sha256", top_line),
                "delete the line",
            )
        )
        content_sha = None

    sessions_raw = data.get("sessions")
    sessions_line = key_line(data, "sessions", top_line)
    sessions: list[Session] = []
    if not isinstance(sessions_raw, list) or not sessions_raw:
        problems.append(
            Problem(
                "a syllabus needs a non-empty list of sessions"
                if sessions_raw is None or sessions_raw == []
                else f"sessions must be a list, not {type_name(sessions_raw)}",
                file,
                sessions_line,
                "add `sessions:` with items `- title: ...`, `goals: [...]`, `concepts: [...]`",
            )
        )
        sessions_raw = []
    lo, hi = settings.min_concepts, settings.max_concepts
    for i, raw in enumerate(sessions_raw):
        line = item_line(sessions_raw, i, sessions_line)
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
                        key_line(raw, key, line),
                        unknown_key_hint(key, SESSION_KEYS),
                    )
                )
        title = raw.get("title")
        if isinstance(title, (int, float)) and not isinstance(title, bool):
            title = str(title)
        if not isinstance(title, str) or not title.strip():
            problems.append(Problem(f"{where} needs a non-empty title", file, line))
            title = ""
        goals = _string_list(
            raw.get("goals"), f"{where} goals", file, key_line(raw, "goals", line), problems
        )
        concepts = _string_list(
            raw.get("concepts"),
            f"{where} concepts",
            file,
            key_line(raw, "concepts", line),
            problems,
        )
        if concepts is not None and not lo <= len(concepts) <= hi:
            problems.append(
                Problem(
                    f"{where} has {len(concepts)} key concept(s); between {lo} and {hi} are "
                    f"allowed",
                    file,
                    key_line(raw, "concepts", line),
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
