"""Read import files into outline trees: a CSV/TSV (one column per level) or a nested JSON
outline, or the node-link JSON that ``corpus taxonomy export`` writes.

Problems are collected and raised at once, naming the file and row (or JSON path); the same
problem repeated over many nodes is one line with a count. ``builder.taxonomy.io`` turns the
trees into discipline files.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.errors import InputError, Problem, ValidationError
from builder.taxonomy.model import STATUSES
from builder.taxonomy.validate import SLUG_RE

__all__ = ["DEFAULT_JSON_LEVELS", "OutlineNode", "read_csv_outline", "read_json_outline"]

DEFAULT_JSON_LEVELS = ("discipline", "subject", "topic")
_EXTRA_COLUMNS = ("description", "weight")
_MAX_PROBLEMS = 25


@dataclass
class OutlineNode:
    """A node read from an import file, before it is written as YAML."""

    name: str
    level: str | None = None
    description: str | None = None
    weight: float | None = None
    status: str | None = None
    prerequisites: list[str] = field(default_factory=list)
    children: list[OutlineNode] = field(default_factory=list)
    id: str | None = None  # given by the file, or assigned by ``assign_ids``

    def walk(self) -> Iterable[tuple[OutlineNode, OutlineNode | None]]:
        """(node, parent) in preorder."""
        stack: list[tuple[OutlineNode, OutlineNode | None]] = [(self, None)]
        while stack:
            node, parent = stack.pop()
            yield node, parent
            stack.extend((c, node) for c in reversed(node.children))


class _Problems:
    """Collects input problems; raises them all at once.

    The same message (and hint) seen again is counted, not repeated: a 4-level outline read
    with 3 level names is one line "... (4,516 times, first at $.children[0]...)". Distinct
    problems are capped, so a bad file stays readable.
    """

    def __init__(self, file: Path) -> None:
        self.file = file
        self.items: list[list[Any]] = []  # [message, line, hint, where, count]
        self._seen: dict[tuple[str, str | None], list[Any]] = {}
        self.dropped = 0

    def add(
        self,
        message: str,
        line: int | None = None,
        hint: str | None = None,
        *,
        where: str | None = None,
    ) -> None:
        key = (message, hint)
        item = self._seen.get(key)
        if item is not None:
            item[4] += 1
        elif len(self.items) < _MAX_PROBLEMS:
            item = [message, line, hint, where, 1]
            self._seen[key] = item
            self.items.append(item)
        else:
            self.dropped += 1

    def __bool__(self) -> bool:
        return bool(self.items)

    def problems(self) -> list[Problem]:
        out = []
        for message, line, hint, where, count in self.items:
            if count > 1:
                at = f", first at {where}" if where else ""
                message = f"{message} ({count:,} times{at})"
            elif where:
                message = f"{where}: {message}"
            out.append(Problem(message, self.file, line, hint))
        if self.dropped:
            out.append(Problem(f"... and {self.dropped} more problem(s)", self.file))
        return out

    def raise_if_any(self) -> None:
        if not self.items:
            return
        items = self.problems()
        if len(items) == 1:
            p = items[0]
            raise InputError(p.message, file=p.file, line=p.line, hint=p.hint)
        raise ValidationError(items)


# -- CSV ------------------------------------------------------------------------------------


def _parse_weight(value: str) -> float | None:
    try:
        w = float(value)
    except ValueError:
        return None
    return w if math.isfinite(w) and w > 0 else None


def read_csv_outline(
    path: str | os.PathLike[str], levels: Sequence[str] | None = None
) -> list[OutlineNode]:
    """Read a CSV (or .tsv) with one column per level into outline trees.

    ``levels`` names the level columns, top first; without it every column except
    ``description`` and ``weight`` is a level, in header order. Each row is one path from a
    top-level node down; ``description``/``weight`` apply to the row's last node. Every row
    needs a value in every level column. Raises ``InputError``/``ValidationError`` naming the
    file and row (row 1 is the header).
    """
    path = Path(path)
    problems = _Problems(path)
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    try:
        fh = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}", file=path) from None
    with fh:
        reader = csv.reader(fh, delimiter=delimiter, strict=True)
        try:
            header = next(reader, None)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise InputError(f"not a readable CSV file: {exc}", file=path, line=1) from None
        if not header or not any(h.strip() for h in header):
            raise InputError(
                "the CSV has no header row",
                file=path,
                line=1,
                hint="the first row names the columns, e.g. domain,field,subfield,topic",
            )
        names = [h.strip() for h in header]
        lower = [n.lower() for n in names]
        dup = sorted({n for n in lower if lower.count(n) > 1 and n})
        if dup:
            raise InputError(
                f"duplicate column(s) in the header: {', '.join(dup)}",
                file=path,
                line=1,
                hint="give every column a distinct name",
            )
        if levels:
            level_names = [lv.strip() for lv in levels]
            missing = [lv for lv in level_names if lv.lower() not in lower]
            if missing:
                raise InputError(
                    f"level column(s) {', '.join(map(repr, missing))} not in the header "
                    f"({', '.join(names)})",
                    file=path,
                    line=1,
                    hint="name the columns with --levels, top level first",
                )
            level_cols = [lower.index(lv.lower()) for lv in level_names]
        else:
            level_cols = [i for i, n in enumerate(lower) if n and n not in _EXTRA_COLUMNS]
            level_names = [names[i] for i in level_cols]
            if not level_cols:
                raise InputError(
                    "no level columns in the header",
                    file=path,
                    line=1,
                    hint="add one column per level, e.g. domain,field,subfield,topic",
                )
        desc_col = lower.index("description") if "description" in lower else None
        weight_col = lower.index("weight") if "weight" in lower else None
        width = len(header)

        roots: list[OutlineNode] = []
        by_path: dict[tuple[str, ...], OutlineNode] = {}
        first_row: dict[tuple[str, ...], tuple[int, str, str]] = {}  # path -> (row, desc, weight)
        end = reader.line_num
        try:
            for row in reader:
                line, end = end + 1, reader.line_num  # the row's first line, and its last
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                if end > line and any("\n" in v or "\r" in v for v in row):
                    problems.add(
                        f"row {line}: a quoted value runs over lines {line}-{end}, swallowing "
                        "what looks like the next row(s)",
                        line,
                        'close the quote (a value with a quote inside is written "a ""b"" c"); '
                        "names and descriptions are one line",
                    )
                    continue
                if len(row) != width:
                    problems.add(
                        f"row {line} has {len(row)} field(s) but the header has {width}",
                        line,
                        "every row needs the same columns; quote values that contain "
                        f"{'tabs' if delimiter == chr(9) else 'commas'}",
                    )
                    continue
                values = [row[i].strip() for i in level_cols]
                empty = [level_names[k] for k, v in enumerate(values) if not v]
                if empty:
                    problems.add(
                        f"row {line}: empty {', '.join(map(repr, empty))} value",
                        line,
                        "every row needs a value in each level column (use nested JSON for "
                        "branches of uneven depth)",
                    )
                    continue
                key: tuple[str, ...] = ()
                parent: OutlineNode | None = None
                node: OutlineNode | None = None
                for k, value in enumerate(values):
                    key = (*key, value)
                    node = by_path.get(key)
                    if node is None:
                        node = OutlineNode(name=value, level=level_names[k])
                        by_path[key] = node
                        (parent.children if parent is not None else roots).append(node)
                    parent = node
                if node is None:
                    continue
                desc = row[desc_col].strip() if desc_col is not None else ""
                wtext = row[weight_col].strip() if weight_col is not None else ""
                earlier = first_row.get(key)
                if earlier is not None:
                    if (desc, wtext) != earlier[1:]:
                        what = "description" if desc != earlier[1] else "weight"
                        problems.add(
                            f"row {line} repeats row {earlier[0]} ({' > '.join(key)}) with "
                            f"another {what}",
                            line,
                            "keep one row per node (delete or merge one of them)",
                        )
                    continue  # an exact repeat adds nothing
                first_row[key] = (line, desc, wtext)
                if desc and node.description is None:
                    node.description = desc
                if weight_col is not None and row[weight_col].strip():
                    weight = _parse_weight(row[weight_col].strip())
                    if weight is None:
                        problems.add(
                            f"row {line}: weight {row[weight_col].strip()!r} is not a number > 0",
                            line,
                        )
                    else:
                        node.weight = weight
        except csv.Error as exc:
            where, hint = reader.line_num, None
            if "unexpected end of data" in str(exc):  # the row being read started at end + 1
                where, hint = end + 1, "a quote opened here is never closed"
            problems.add(f"not valid CSV ({exc})", where, hint)
        except UnicodeDecodeError as exc:
            problems.add(f"not UTF-8 text ({exc.reason})", None, "save the file as UTF-8")
    problems.raise_if_any()
    if not roots:
        raise InputError("the CSV has a header but no rows", file=path, line=2)
    return roots


# -- JSON -----------------------------------------------------------------------------------

_JSON_KEYS = ("name", "id", "description", "level", "weight", "status", "prerequisites", "children")


def read_json_outline(
    path: str | os.PathLike[str],
    levels: Sequence[str] | None = None,
    default_levels: Sequence[str] = DEFAULT_JSON_LEVELS,
) -> list[OutlineNode]:
    """Read a nested JSON outline (``{name, children: [...]}`` or a list of them), or
    networkx node-link JSON as written by ``export --format json``.

    Optional keys: id, description, level, weight, status, prerequisites. Without ``level``,
    a node's level is ``levels[depth]``. Without ``levels``: ``default_levels`` (discipline,
    subject, topic) when the outline is no deeper, else ``level1``..``levelN`` for an outline
    N levels deep (``corpus taxonomy import --levels`` names them).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}", file=path) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc.msg}", file=path, line=exc.lineno) from None
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text ({exc.reason})", file=path) from None
    if isinstance(data, dict) and "nodes" in data and ("edges" in data or "links" in data):
        return _read_node_link(path, data)
    if levels:
        level_names = tuple(levels)
    else:
        depth = _outline_depth(data)
        level_names = (
            tuple(default_levels)
            if depth <= len(default_levels)
            else tuple(f"level{k}" for k in range(1, depth + 1))
        )
    problems = _Problems(path)
    items = data if isinstance(data, list) else [data]
    roots: list[OutlineNode] = []
    # Iterative: (json value, where, depth, parent's children list)
    stack: list[tuple[Any, str, int, list[OutlineNode]]] = []
    where0 = "$" if not isinstance(data, list) else "$[{}]"
    for i in reversed(range(len(items))):
        stack.append((items[i], where0.format(i), 0, roots))
    while stack:
        obj, where, depth, siblings = stack.pop()
        if not isinstance(obj, dict):
            problems.add(f"expected an object with a name, got {type(obj).__name__}", where=where)
            continue
        unknown = [k for k in obj if k not in _JSON_KEYS]
        if unknown:
            problems.add(
                f"unknown key(s) {', '.join(map(repr, unknown))}",
                None,
                f"valid keys: {', '.join(_JSON_KEYS)}",
                where=where,
            )
        name = obj.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.add("every node needs a non-empty 'name'", where=where)
            name = ""
        level = obj.get("level")
        if level is None:
            if depth < len(level_names):
                level = level_names[depth]
            else:
                problems.add(
                    f"a node nested {depth + 1} levels deep but only {len(level_names)} "
                    f"level name(s) given ({', '.join(level_names)})",
                    None,
                    "pass --levels with one name per level, top first, or leave --levels "
                    "out to name them level1..levelN",
                    where=where,
                )
        elif not isinstance(level, str):
            problems.add("'level' must be text", where=where)
            level = None
        description = obj.get("description")
        if description is not None and not isinstance(description, str):
            problems.add("'description' must be text", where=where)
            description = None
        weight = obj.get("weight")
        if weight is not None and (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not math.isfinite(weight)
            or weight <= 0
        ):
            problems.add("'weight' must be a number > 0", where=where)
            weight = None
        status = obj.get("status")
        if status is not None and status not in STATUSES:
            problems.add(f"'status' must be one of {', '.join(STATUSES)}", where=where)
            status = None
        node_id = obj.get("id")
        if node_id is not None and not (isinstance(node_id, str) and SLUG_RE.match(node_id)):
            problems.add(
                f"'id' {node_id!r} is not a slug",
                None,
                "use lowercase words joined by '-', or leave it out",
                where=where,
            )
            node_id = None
        prereqs = obj.get("prerequisites") or []
        if not isinstance(prereqs, list) or not all(isinstance(p, str) for p in prereqs):
            problems.add("'prerequisites' must be a list of ids", where=where)
            prereqs = []
        node = OutlineNode(
            name=name.strip(),
            level=level,
            description=description,
            weight=float(weight) if weight is not None else None,
            status=status,
            prerequisites=list(prereqs),
            id=node_id,
        )
        siblings.append(node)
        children = obj.get("children") or []
        if not isinstance(children, list):
            problems.add("'children' must be a list", where=where)
            children = []
        for j in reversed(range(len(children))):
            stack.append((children[j], f"{where}.children[{j}]", depth + 1, node.children))
    problems.raise_if_any()
    if not roots:
        raise InputError("the JSON outline is empty", file=path)
    return roots


def _outline_depth(data: Any) -> int:
    """Levels of the deepest branch of a nested outline (1 for a lone node)."""
    deepest = 0
    stack = [(item, 1) for item in (data if isinstance(data, list) else [data])]
    while stack:
        obj, depth = stack.pop()
        if not isinstance(obj, dict):
            continue
        deepest = max(deepest, depth)
        kids = obj.get("children")
        if isinstance(kids, list):
            stack.extend((k, depth + 1) for k in kids)
    return deepest


def _read_node_link(path: Path, data: dict[str, Any]) -> list[OutlineNode]:
    problems = _Problems(path)
    edges = data.get("edges", data.get("links")) or []
    nodes: dict[str, OutlineNode] = {}
    external: set[str] = set()  # nodes a subtree export depends on, not part of it
    for i, n in enumerate(data.get("nodes") or []):
        if not isinstance(n, dict) or not isinstance(n.get("id"), str):
            problems.add(f"nodes[{i}]: every node needs a string 'id'")
            continue
        if n.get("external") is True:
            external.add(n["id"])
            continue
        weight = n.get("weight")
        nodes[n["id"]] = OutlineNode(
            name=str(n.get("name") or n["id"]),
            level=n.get("level"),
            description=n.get("description"),
            weight=float(weight) if isinstance(weight, (int, float)) and weight != 1 else None,
            status=n.get("status") if n.get("status") != "approved" else None,
            id=n["id"],
        )
    has_parent: set[str] = set()
    prereqs: list[tuple[Any, int, str, str]] = []
    for i, e in enumerate(edges):
        if not isinstance(e, dict):
            problems.add(f"edges[{i}]: expected an object with source and target")
            continue
        src, dst = e.get("source"), e.get("target")
        if src in external and dst in nodes and e.get("kind") == "prerequisite":
            order = e.get("order")
            prereqs.append((order if isinstance(order, int) else i, i, dst, src))
            continue
        if src not in nodes or dst not in nodes:
            problems.add(f"edges[{i}]: {src!r} -> {dst!r} names an unknown node")
            continue
        if e.get("kind", "child") == "prerequisite":
            order = e.get("order")
            prereqs.append((order if isinstance(order, int) else i, i, dst, src))
        else:
            if dst in has_parent:
                problems.add(
                    f"edges[{i}]: {dst!r} has two parents",
                    None,
                    "a taxonomy is a tree; mark extra edges kind=prerequisite",
                )
                continue
            has_parent.add(dst)
            nodes[src].children.append(nodes[dst])
    for _, _, dst, src in sorted(prereqs, key=lambda t: (t[0], t[1])):
        nodes[dst].prerequisites.append(src)
    problems.raise_if_any()
    roots = [n for node_id, n in nodes.items() if node_id not in has_parent]
    if not roots and nodes:
        raise InputError("the node-link graph has no root (every node has a parent)", file=path)
    return roots
