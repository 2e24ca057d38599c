"""Load and validate taxonomy files, reporting every problem at once as ``file:line``.

A taxonomy directory holds one YAML file per discipline at its top level (``*.yaml`` or
``*.yml``); subdirectories (such as ``<discipline>/syllabi/``) are not node files. Checks:
YAML syntax, unknown keys (with the closest valid key), wrong types, id slugs, empty names,
status values, duplicate ids across files, dangling prerequisites, prerequisites on one's own
ancestor or descendant, unknown level names (``builder.taxonomy.crosscheck``), and
prerequisite cycles (printed as ``a -> b -> a`` with every edge's ``file:line``).

YAML syntax errors come first: a file that cannot be read hides its ids, so prerequisites that
point into it are reported as one line, not one per edge. Suspicious but loadable things
(a level that repeats an ancestor's) are warnings, kept on ``Taxonomy.warnings``.

The checks work on texts (``check_texts``) so that the editor can validate an edit before
writing anything.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.errors import Problem, ValidationError
from builder.taxonomy.crosscheck import DEFAULT_LEVELS, check_levels, find_cycles
from builder.taxonomy.files import discover_files, read_texts
from builder.taxonomy.model import DEFAULT_STATUS, STATUSES, Node, Taxonomy
from builder.taxonomy.parse import YamlSyntaxError, YMap, YSeq, parse_yaml
from builder.util.yamlcheck import type_name, unknown_key_hint

__all__ = [
    "NODE_KEYS",
    "SLUG_RE",
    "check_taxonomy",
    "check_texts",
    "discover_files",
    "is_slug",
    "load_taxonomy",
    "slugify",
    "validate_taxonomy",
]

NODE_KEYS = (
    "id",
    "name",
    "description",
    "level",
    "weight",
    "prerequisites",
    "status",
    "children",
)
_NODE_KEY_SET = frozenset(NODE_KEYS)
SLUG_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*\Z")
SLUG_RULE = "lowercase letters and digits in words joined by single '-'"
_MAX_SUGGESTIONS = 20  # difflib over every id is O(n); only suggest for the first few errors


def is_slug(value: object) -> bool:
    return isinstance(value, str) and SLUG_RE.match(value) is not None


def slugify(text: str) -> str:
    """A slug id for a name: ASCII-folded, lowercase, words joined by '-'.

    Returns '' when nothing ASCII is left (callers supply a fallback).
    """
    import unicodedata

    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    folded = folded.lower().replace("&", " and ").replace("+", " plus ")
    return re.sub(r"[^a-z0-9]+", "-", folded).strip("-")


@dataclass
class _Raw:
    """A node as read, before cross-file checks."""

    id: str
    name: str
    description: str | None
    level: str | None
    weight: float
    prerequisites: list[str]
    prerequisite_lines: list[int]
    level_line: int
    status: str
    parent: str | None
    depth: int
    file: Path
    line: int
    children: list[str] = field(default_factory=list)
    valid_id: bool = True


class _Checker:
    """Collects problems while reading files; ``finish`` runs the cross-file checks."""

    def __init__(self, levels: Sequence[str] = DEFAULT_LEVELS) -> None:
        self.levels = tuple(levels)
        self.problems: list[Problem] = []
        self.syntax: list[Problem] = []  # YAML syntax errors: reported first
        self.warnings: list[Problem] = []
        self.nodes: list[_Raw] = []  # preorder, file order
        self.by_id: dict[str, _Raw] = {}
        self.unreadable: list[str] = []  # files that could not be parsed (for hints)
        self._synthetic = 0

    def problem(self, message: str, file: Path, line: int | None, hint: str | None = None):
        self.problems.append(Problem(message, file, line, hint))

    # -- per file -----------------------------------------------------------------------------

    def add_file(self, file: Path, text: str) -> None:
        try:
            data, dups = parse_yaml(text)
        except YamlSyntaxError as exc:
            self.unreadable.append(str(file))
            self.syntax.append(Problem(exc.message, file, exc.line))
            return
        for line, message in dups:
            self.problem(message, file, line, "keep one of them")
        if data is None:
            self.problem(
                "file is empty",
                file,
                1,
                "a discipline file holds one mapping with at least id and name; delete the "
                "file if it is not needed",
            )
            return
        if not isinstance(data, YMap):
            line = getattr(data, "line", 1)
            self.problem(
                f"a discipline file must be one mapping (id, name, children...), not "
                f"{type_name(data)}",
                file,
                line,
                "put one discipline per file",
            )
            return
        self._walk(data, file)

    def _walk(self, top: YMap, file: Path) -> None:
        # Iterative preorder; each entry: (mapping, parent raw node or None, depth).
        stack: list[tuple[YMap, _Raw | None, int]] = [(top, None, 0)]
        while stack:
            m, parent, depth = stack.pop()
            raw, children = self._node(m, parent, depth, file)
            if parent is not None:
                parent.children.append(raw.id)
            for child in reversed(children):
                stack.append((child, raw, depth + 1))

    def _node(
        self, m: YMap, parent: _Raw | None, depth: int, file: Path
    ) -> tuple[_Raw, list[YMap]]:
        lines = m.key_lines
        line = m.line
        for key in m:
            if key not in _NODE_KEY_SET:
                self._unknown_key(key, lines[key], file)

        # id
        node_id = m.get("id")
        valid_id = True
        if "id" not in m or node_id is None:
            valid_id = False
            name = m.get("name")
            suggestion = slugify(name) if isinstance(name, str) else ""
            self.problem(
                "node has no id",
                file,
                line,
                f"add `id: {suggestion}`" if suggestion else "add a unique slug id",
            )
        elif not isinstance(node_id, str):
            valid_id = False
            self.problem(
                f"id must be text, got {type_name(node_id)}",
                file,
                lines["id"],
                f'quote it: id: "{node_id}"' if not isinstance(node_id, (list, dict)) else None,
            )
        elif not SLUG_RE.match(node_id):
            valid_id = False
            fix = slugify(node_id)
            self.problem(
                f"id {node_id!r} is not a slug ({SLUG_RULE})",
                file,
                lines["id"],
                f"use {fix!r}" if fix else None,
            )
        if not valid_id:
            self._synthetic += 1
            node_id = f"<node at {file}:{line}>#{self._synthetic}"
        label = node_id if valid_id else "node"

        # name
        name = m.get("name")
        if "name" not in m:
            self.problem(
                f"{label!r} has no name" if valid_id else "node has no name",
                file,
                line,
                "add `name: ...` with a human-readable name",
            )
            name = ""
        elif not isinstance(name, str):
            self.problem(
                f"name of {label!r} must be text, got {type_name(name)}",
                file,
                lines["name"],
                "quote it" if name is not None else "give it a human-readable name",
            )
            name = "" if name is None else str(name)
        elif not name.strip():
            self.problem(
                f"name of {label!r} is empty", file, lines["name"], "give it a human-readable name"
            )

        description = m.get("description")
        if description is not None and not isinstance(description, str):
            self.problem(
                f"description of {label!r} must be text, got {type_name(description)}",
                file,
                lines["description"],
                "quote it",
            )
            description = str(description)

        level = m.get("level")
        if level is not None and (not isinstance(level, str) or not level.strip()):
            self.problem(
                f"level of {label!r} must be a name such as discipline, subject or topic, "
                f"got {type_name(level)}",
                file,
                lines["level"],
            )
            level = None

        weight = m.get("weight", 1.0)
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not math.isfinite(weight)
            or weight <= 0
        ):
            shown = weight if isinstance(weight, (int, float, str)) else type_name(weight)
            self.problem(
                f"weight of {label!r} must be a number > 0, got {shown!r}",
                file,
                lines.get("weight", line),
                "use e.g. `weight: 2` for twice the default share; omit it for 1",
            )
            weight = 1.0
        weight = float(weight)

        status = m.get("status", DEFAULT_STATUS)
        if status not in STATUSES:
            close = difflib.get_close_matches(str(status), STATUSES, n=1)
            self.problem(
                f"status {status!r} of {label!r} is not one of {', '.join(STATUSES)}",
                file,
                lines.get("status", line),
                f"did you mean {close[0]!r}?" if close else f"omit it for {DEFAULT_STATUS}",
            )
            status = DEFAULT_STATUS

        prerequisites: list[str] = []
        prerequisite_lines: list[int] = []
        pre = m.get("prerequisites")
        if pre is not None:
            if not isinstance(pre, YSeq):
                self.problem(
                    f"prerequisites of {label!r} must be a list of ids, got {type_name(pre)}",
                    file,
                    lines["prerequisites"],
                    f"write `prerequisites: [{pre}]`" if isinstance(pre, str) else None,
                )
            else:
                seen: set[str] = set()
                for item, item_line in zip(pre, pre.item_lines, strict=True):
                    if not isinstance(item, str):
                        self.problem(
                            f"prerequisite of {label!r} must be an id, got {type_name(item)}",
                            file,
                            item_line,
                        )
                    elif item in seen:
                        self.problem(
                            f"prerequisite {item!r} is listed twice in {label!r}",
                            file,
                            item_line,
                            "remove the duplicate",
                        )
                    else:
                        seen.add(item)
                        prerequisites.append(item)
                        prerequisite_lines.append(item_line)

        children: list[YMap] = []
        kids = m.get("children")
        if kids is not None:
            if not isinstance(kids, YSeq):
                self.problem(
                    f"children of {label!r} must be a list of nodes, got {type_name(kids)}",
                    file,
                    lines["children"],
                    "write each child as `- id: ...` under `children:`",
                )
            else:
                for item, item_line in zip(kids, kids.item_lines, strict=True):
                    if isinstance(item, YMap):
                        children.append(item)
                    else:
                        self.problem(
                            f"child of {label!r} must be a mapping with id and name, got "
                            f"{type_name(item)}",
                            file,
                            item_line,
                            "write it as `- {id: ..., name: ...}`",
                        )

        raw = _Raw(
            id=node_id,
            name=name,
            description=description,
            level=level,
            weight=weight,
            prerequisites=prerequisites,
            prerequisite_lines=prerequisite_lines,
            level_line=lines.get("level", line),
            status=status,
            parent=parent.id if parent is not None else None,
            depth=depth,
            file=file,
            line=line,
            valid_id=valid_id,
        )
        self.nodes.append(raw)
        if valid_id:
            first = self.by_id.get(node_id)
            if first is not None:
                self.problem(
                    f"duplicate id {node_id!r} (also at {first.file}:{first.line})",
                    file,
                    lines["id"],
                    "ids must be unique; rename one of them",
                )
            else:
                self.by_id[node_id] = raw
        return raw, children

    def _unknown_key(self, key: Any, line: int, file: Path) -> None:
        self.problem(f"unknown key {key!r}", file, line, unknown_key_hint(key, NODE_KEYS, 0.5))

    # -- across files -------------------------------------------------------------------------

    def finish(self) -> None:
        by_id = self.by_id
        suggestions = 0
        edges: list[tuple[str, str, Path, int]] = []  # (prerequisite, node, file, line)
        unresolved: list[tuple[str, _Raw, int]] = []  # dangling while some file is unreadable
        for raw in self.nodes:
            if not raw.valid_id or by_id.get(raw.id) is not raw:
                continue
            for pre, line in zip(raw.prerequisites, raw.prerequisite_lines, strict=True):
                if pre == raw.id:
                    self.problem(
                        f"{raw.id!r} lists itself as a prerequisite",
                        raw.file,
                        line,
                        "remove it from prerequisites",
                    )
                elif pre not in by_id:
                    if self.unreadable:
                        unresolved.append((pre, raw, line))
                        continue
                    hint = "add it or remove it from prerequisites"
                    if suggestions < _MAX_SUGGESTIONS:
                        suggestions += 1
                        close = [
                            c
                            for c in difflib.get_close_matches(pre, by_id, n=3, cutoff=0.75)
                            if c != raw.id
                        ]
                        if close:
                            hint = f"did you mean {close[0]!r}? else {hint}"
                    self.problem(
                        f"prerequisite {pre!r} of {raw.id!r} is not a node of the taxonomy",
                        raw.file,
                        line,
                        hint,
                    )
                elif self._is_ancestor(raw.id, pre):
                    self.problem(
                        f"{raw.id!r} lists its own descendant {pre!r} as a prerequisite "
                        "(a node cannot require part of itself)",
                        raw.file,
                        line,
                        "remove it from prerequisites",
                    )
                elif self._is_ancestor(pre, raw.id):
                    self.problem(
                        f"{raw.id!r} lists its own ancestor {pre!r} as a prerequisite "
                        f"(it is part of {pre!r}, so it cannot come after it)",
                        raw.file,
                        line,
                        "remove it from prerequisites",
                    )
                else:
                    edges.append((pre, raw.id, raw.file, line))
        if unresolved:
            pre, raw, line = unresolved[0]
            unread = ", ".join(self.unreadable)
            more = f" and {len(unresolved) - 1} more" if len(unresolved) > 1 else ""
            self.problem(
                f"{len(unresolved)} prerequisite(s) could not be checked because {unread} could "
                f"not be read (first: {pre!r} of {raw.id!r}{more})",
                raw.file,
                line,
                "fix the YAML syntax error(s) above, then validate again",
            )
        valid = [r for r in self.nodes if r.valid_id and by_id.get(r.id) is r]
        level_errors, self.warnings = check_levels(valid, by_id, self.levels)
        self.problems.extend(level_errors)
        self.problems.extend(find_cycles(valid, by_id, edges))

    def _is_ancestor(self, ancestor: str, node_id: str) -> bool:
        p = self.by_id[node_id].parent
        while p is not None:
            if p == ancestor:
                return True
            p = self.by_id[p].parent if p in self.by_id else None
        return False

    # -- result -------------------------------------------------------------------------------

    def sorted_problems(self, only: Path | None = None) -> list[Problem]:
        """Syntax errors first (they cause others), then the rest by file and line.

        With ``only``, just the problems located in that file (a single-file load).
        """
        rest = sorted(self.problems, key=lambda p: (str(p.file), p.line or 0))
        problems = self.syntax + rest
        if only is not None:
            problems = [p for p in problems if p.file is None or Path(p.file) == only]
        return problems

    def build(self, root: Path, files: list[Path], only: Path | None = None) -> Taxonomy:
        raws = self.nodes if only is None else [r for r in self.nodes if r.file == only]
        keep = {r.id for r in raws}
        external: dict[str, tuple[str, ...]] = {}
        nodes = []
        for r in raws:
            pres = tuple(r.prerequisites)
            if only is not None and any(p not in keep for p in pres):
                external[r.id] = tuple(p for p in pres if p not in keep)
                pres = tuple(p for p in pres if p in keep)
            nodes.append(
                Node(
                    id=r.id,
                    name=r.name,
                    description=r.description,
                    level=r.level,
                    weight=r.weight,
                    prerequisites=pres,
                    status=r.status,
                    parent=r.parent,
                    children=tuple(r.children),
                    depth=r.depth,
                    file=r.file,
                    line=r.line,
                )
            )
        warnings = self.warnings
        if only is not None:
            warnings = [w for w in warnings if w.file == only]
            files = [only]
        return Taxonomy(
            root,
            nodes,
            files,
            warnings=warnings,
            external_prerequisites=external,
            levels=self.levels,
        )


def check_texts(
    texts: Mapping[Path, str],
    root: str | os.PathLike[str] = ".",
    *,
    levels: Sequence[str] | None = None,
    only: Path | None = None,
) -> tuple[list[Problem], Taxonomy | None]:
    """Validate discipline files given as ``{path: text}`` (in file order).

    Returns ``(problems, taxonomy)``; the taxonomy is None when there are problems.
    ``levels`` are the known level names (default discipline, subject, topic). With ``only``,
    the other files serve to resolve prerequisites, and the problems and the taxonomy are
    those of that one file.
    """
    checker = _Checker(levels if levels is not None else DEFAULT_LEVELS)
    for file, text in texts.items():
        checker.add_file(Path(file), text)
    checker.finish()
    problems = checker.sorted_problems(only)
    if problems:
        return problems, None
    return [], checker.build(Path(root), list(texts), only)


def check_taxonomy(
    path: str | os.PathLike[str], *, levels: Sequence[str] | None = None
) -> tuple[list[Problem], Taxonomy | None]:
    """``(problems, taxonomy)`` for the taxonomy at ``path``; the taxonomy is None on problems.

    ``path`` is a directory, or one discipline file: that file is validated together with the
    files beside it (prerequisites may name ids in other files) and the taxonomy holds its
    nodes only, with prerequisites in other files moved to ``external_prerequisites``.
    One read for callers that want both (``corpus taxonomy validate`` goes on to check
    syllabi against the loaded taxonomy).
    """
    path = Path(path)
    only: Path | None = None
    if path.is_file():
        only = path
        files = discover_files(path.parent)
        if path not in files:
            files.append(path)
        root = path.parent
    else:
        files = discover_files(path)
        root = path
    if not files:
        return [
            Problem(
                f"no taxonomy files (*.yaml) in {root}",
                root,
                None,
                "add one YAML file per discipline, or run `corpus taxonomy import`",
            )
        ], None
    texts, read_problems = read_texts(files)
    problems, tax = check_texts(texts, root, levels=levels, only=only)
    if only is not None:
        read_problems = [p for p in read_problems if Path(str(p.file)) == only]
    if read_problems:
        return read_problems + problems, None
    return problems, tax


def validate_taxonomy(
    path: str | os.PathLike[str] = "taxonomy", *, levels: Sequence[str] | None = None
) -> list[Problem]:
    """Every problem of the taxonomy at ``path`` (a directory or one file); [] when valid."""
    return check_taxonomy(path, levels=levels)[0]


def load_taxonomy(
    path: str | os.PathLike[str] = "taxonomy", *, levels: Sequence[str] | None = None
) -> Taxonomy:
    """Load and validate the taxonomy at ``path`` (a directory, or a single discipline file,
    see ``check_taxonomy``). ``levels`` are the known level names (``[taxonomy] levels``).

    Raises ``ValidationError`` listing every problem as ``file:line: message (fix)``, or
    ``TaxonomyError`` if the directory does not exist. Warnings are on ``Taxonomy.warnings``.
    """
    problems, tax = check_taxonomy(path, levels=levels)
    if problems:
        raise ValidationError(problems, summary=f"{len(problems)} problem(s) in {path}")
    return tax  # type: ignore[return-value]  # never None without problems
