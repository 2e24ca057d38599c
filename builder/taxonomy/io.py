"""Import a taxonomy from a CSV or nested JSON outline (export: ``builder.taxonomy.export``).

Import reads an outline into ``OutlineNode`` trees, gives every node a stable slug id (the
slug of its name; on a collision, prefixed with its parent's id, then numbered ``-2``,
``-3``..., claimed in order of first appearance so appending rows never renames existing
nodes), renders one YAML file per top-level node, validates the result together with the
files already in the target directory, and only then writes (atomically). Nothing is written
when anything is wrong.

``import`` also reads the node-link JSON that ``export --format json`` writes, so export ->
import reproduces a taxonomy.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.errors import InputError, Problem, TaxonomyError, ValidationError
from builder.taxonomy.crosscheck import close_level
from builder.taxonomy.files import atomic_write_text
from builder.taxonomy.model import Taxonomy
from builder.taxonomy.outline import (
    DEFAULT_JSON_LEVELS,
    OutlineNode,
    read_csv_outline,
    read_json_outline,
)
from builder.taxonomy.parse import _resolve_plain
from builder.taxonomy.validate import check_texts, discover_files, slugify

__all__ = [
    "DEFAULT_JSON_LEVELS",
    "ImportResult",
    "OutlineNode",
    "assign_ids",
    "import_taxonomy",
    "outline_to_yaml",
    "read_csv_outline",
    "read_json_outline",
]

_MAX_SLUG = 60


# -- ids and YAML ---------------------------------------------------------------------------


def _base_slug(name: str) -> str:
    slug = slugify(name)
    if not slug:  # nothing ASCII in the name: a short stable hash keeps ids valid and unique
        return "n-" + hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]
    if len(slug) > _MAX_SLUG:
        cut = slug[:_MAX_SLUG]
        slug = cut.rsplit("-", 1)[0] if "-" in cut else cut
    return slug


def assign_ids(roots: Sequence[OutlineNode]) -> None:
    """Give every node without an id a unique slug, deterministically (see module doc)."""
    taken = {n.id for r in roots for n, _ in r.walk() if n.id}
    for root in roots:
        for node, parent in root.walk():
            if node.id:
                continue
            base = _base_slug(node.name)
            candidate = base
            if candidate in taken and parent is not None and parent.id:
                candidate = f"{parent.id}-{base}"
            k = 2
            stem = candidate
            while candidate in taken:
                candidate = f"{stem}-{k}"
                k += 1
            node.id = candidate
            taken.add(candidate)


def _scalar(value: Any) -> str:
    """A YAML scalar: plain when unambiguous, else a JSON string (valid YAML double-quoted)."""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    s = str(value)
    if (
        s
        and s == s.strip()
        and s[0].isalnum()
        and all(c.isalnum() or c in " _.,()/'&+-" for c in s)
        and isinstance(_resolve_plain(s), str)
        and s.isascii()
    ):
        return s
    return json.dumps(s, ensure_ascii=False)


def outline_to_yaml(root: OutlineNode, header: str | None = None) -> str:
    """Render one outline tree as a discipline file (block style, like hand-written ones)."""
    lines: list[str] = []
    if header:
        lines.extend(f"# {h}" if h else "#" for h in header.splitlines())

    def emit(node: OutlineNode, indent: str, first: str) -> None:
        pad = first
        fields: list[tuple[str, str]] = [("id", _scalar(node.id)), ("name", _scalar(node.name))]
        if node.description:
            fields.append(("description", _scalar(node.description)))
        if node.level:
            fields.append(("level", _scalar(node.level)))
        if node.weight is not None and node.weight != 1:
            fields.append(("weight", _scalar(node.weight)))
        if node.status and node.status != "approved":
            fields.append(("status", _scalar(node.status)))
        if node.prerequisites:
            fields.append(
                ("prerequisites", "[" + ", ".join(_scalar(p) for p in node.prerequisites) + "]")
            )
        for key, value in fields:
            lines.append(f"{pad}{key}: {value}")
            pad = indent
        if node.children:
            lines.append(f"{indent}children:")
            for child in node.children:
                emit(child, indent + "    ", indent + "  - ")

    emit(root, "", "")
    return "\n".join(lines) + "\n"


@dataclass
class ImportResult:
    """What an import wrote (or, with ``dry_run``, would write)."""

    files: list[Path]
    taxonomy: Taxonomy
    nodes: int
    per_level: dict[str, int]
    texts: dict[Path, str] = field(default_factory=dict)  # the new text of each file
    previous: dict[Path, str] = field(default_factory=dict)  # files it replaces (--force)
    # Imported level names close to a configured one (``subtopic`` next to ``topic``):
    # `corpus taxonomy validate` takes them for typos until they are in [taxonomy] levels.
    unlisted_levels: list[str] = field(default_factory=list)

    def diff(self) -> str:
        """Unified diff of every file against what is on disk (empty for a new file)."""
        import difflib

        out: list[str] = []
        for path, text in self.texts.items():
            old = self.previous.get(path, "")
            out.extend(
                difflib.unified_diff(
                    old.splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    fromfile=f"a/{path}" if path in self.previous else "/dev/null",
                    tofile=f"b/{path}",
                )
            )
        return "".join(out)


def import_taxonomy(
    source: str | os.PathLike[str],
    into: str | os.PathLike[str],
    *,
    levels: Sequence[str] | None = None,
    default_levels: Sequence[str] = DEFAULT_JSON_LEVELS,
    force: bool = False,
    dry_run: bool = False,
) -> ImportResult:
    """Import a CSV/TSV or JSON outline into ``into`` as one YAML file per top-level node.

    Refuses to overwrite existing files unless ``force``. The imported files are validated
    together with the other files already in ``into``; on any problem nothing is written.
    ``dry_run`` validates without writing. Returns the files and the resulting taxonomy.
    """
    source = Path(source)
    into = Path(into)
    suffix = source.suffix.lower()
    if suffix in (".csv", ".tsv", ".tab"):
        roots = read_csv_outline(source, levels)
    elif suffix == ".json":
        roots = read_json_outline(source, levels, default_levels)
    else:
        raise InputError(
            f"cannot tell the format of {source}",
            file=source,
            hint="use a .csv/.tsv file (one column per level) or a .json outline",
        )
    assign_ids(roots)
    header = f"Imported from {source.name} by `corpus taxonomy import`; edit freely."
    new_texts: dict[Path, str] = {}
    for root in roots:
        new_texts[into / f"{root.id}.yaml"] = outline_to_yaml(root, header)
    if into.exists() and not into.is_dir():
        raise TaxonomyError(f"{into} is not a directory", hint="pass --into DIR")
    existing = discover_files(into) if into.is_dir() else []
    clashes = [p for p in new_texts if p.exists()]
    if clashes and not force:
        shown = ", ".join(str(p) for p in clashes[:5])
        more = f" and {len(clashes) - 5} more" if len(clashes) > 5 else ""
        raise TaxonomyError(
            f"would overwrite {shown}{more}",
            hint="pass --force to replace them, or --into an empty directory",
        )
    texts: dict[Path, str] = {}
    for p in existing:
        if p not in new_texts:
            texts[p] = p.read_text(encoding="utf-8")
    texts.update(new_texts)
    texts = dict(sorted(texts.items()))
    known = list(default_levels)
    unlisted: list[str] = []
    for root in roots:
        for node, _ in root.walk():
            if node.level and node.level not in known:
                known.append(node.level)
                if close_level(node.level, default_levels) is not None:
                    unlisted.append(node.level)
    problems, tax = check_texts(texts, into, levels=known)
    if problems or tax is None:
        raise ValidationError(
            [
                Problem(
                    f"import refused, nothing was written: the result in {into} would be invalid",
                    hint="problems below refer to the files it would write",
                ),
                *problems,
            ]
        )
    if not dry_run:
        into.mkdir(parents=True, exist_ok=True)
        for p, text in new_texts.items():
            atomic_write_text(p, text)
    per_level: dict[str, int] = {}
    for root in roots:
        for node, _ in root.walk():
            key = node.level or "(unset)"
            per_level[key] = per_level.get(key, 0) + 1
    return ImportResult(
        files=list(new_texts),
        taxonomy=tax,
        nodes=sum(per_level.values()),
        per_level=per_level,
        texts=new_texts,
        previous={p: p.read_text(encoding="utf-8") for p in clashes},
        unlisted_levels=unlisted,
    )
