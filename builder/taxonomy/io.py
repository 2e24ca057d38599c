"""Import a taxonomy from a CSV or nested JSON outline; export one to JSON, GraphML, Mermaid, dot.

Import reads an outline into ``OutlineNode`` trees, gives every node a stable slug id (the
slug of its name; on a collision, prefixed with its parent's id, then numbered ``-2``,
``-3``..., claimed in order of first appearance so appending rows never renames existing
nodes), renders one YAML file per top-level node, validates the result together with the
files already in the target directory, and only then writes (atomically). Nothing is written
when anything is wrong.

Export builds on ``Taxonomy.graph``: JSON is networkx node-link data (``edges`` key), which
``networkx.node_link_graph(data, edges="edges")`` reads back and which ``import`` accepts too,
so ``export --format json`` -> ``import`` reproduces the taxonomy.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.errors import InputError, Problem, TaxonomyError, ValidationError
from builder.taxonomy.crosscheck import DEFAULT_LEVELS
from builder.taxonomy.files import atomic_write_text
from builder.taxonomy.model import STATUSES, Taxonomy
from builder.taxonomy.parse import _resolve_plain
from builder.taxonomy.validate import SLUG_RE, check_texts, discover_files, slugify

__all__ = [
    "EXPORT_FORMATS",
    "DEFAULT_JSON_LEVELS",
    "ImportResult",
    "OutlineNode",
    "assign_ids",
    "export_taxonomy",
    "import_taxonomy",
    "outline_to_yaml",
    "read_csv_outline",
    "read_json_outline",
    "to_dot",
    "to_graphml",
    "to_mermaid",
    "to_node_link",
]

DEFAULT_JSON_LEVELS = ("discipline", "subject", "topic")
_EXTRA_COLUMNS = ("description", "weight")
_MAX_PROBLEMS = 25
_MAX_SLUG = 60


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
    """Collects input problems; raises them all at once (capped, so a bad file stays readable)."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.items: list[Problem] = []
        self.dropped = 0

    def add(self, message: str, line: int | None = None, hint: str | None = None) -> None:
        if len(self.items) < _MAX_PROBLEMS:
            self.items.append(Problem(message, self.file, line, hint))
        else:
            self.dropped += 1

    def raise_if_any(self) -> None:
        if not self.items:
            return
        items = list(self.items)
        if self.dropped:
            items.append(Problem(f"... and {self.dropped} more problem(s)", self.file))
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
        reader = csv.reader(fh, delimiter=delimiter)
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
        try:
            for row in reader:
                line = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
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
                if desc_col is not None and row[desc_col].strip() and node.description is None:
                    node.description = row[desc_col].strip()
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
            problems.add(f"row {reader.line_num}: {exc}", reader.line_num)
        except UnicodeDecodeError as exc:
            problems.add(f"not UTF-8 text ({exc.reason})", None, "save the file as UTF-8")
    problems.raise_if_any()
    if not roots:
        raise InputError("the CSV has a header but no rows", file=path, line=2)
    return roots


# -- JSON -----------------------------------------------------------------------------------

_JSON_KEYS = ("name", "id", "description", "level", "weight", "status", "prerequisites", "children")


def read_json_outline(
    path: str | os.PathLike[str], levels: Sequence[str] | None = None
) -> list[OutlineNode]:
    """Read a nested JSON outline (``{name, children: [...]}`` or a list of them), or
    networkx node-link JSON as written by ``export --format json``.

    Optional keys: id, description, level, weight, status, prerequisites. Without ``level``,
    a node's level is ``levels[depth]`` (default discipline, subject, topic).
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
    level_names = tuple(levels) if levels else DEFAULT_JSON_LEVELS
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
            problems.add(f"{where}: expected an object with a name, got {type(obj).__name__}")
            continue
        unknown = [k for k in obj if k not in _JSON_KEYS]
        if unknown:
            problems.add(
                f"{where}: unknown key(s) {', '.join(map(repr, unknown))}",
                None,
                f"valid keys: {', '.join(_JSON_KEYS)}",
            )
        name = obj.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.add(f"{where}: every node needs a non-empty 'name'")
            name = ""
        level = obj.get("level")
        if level is None:
            if depth < len(level_names):
                level = level_names[depth]
            else:
                problems.add(
                    f"{where}: nested {depth + 1} levels deep but only {len(level_names)} "
                    "level name(s) known",
                    None,
                    "pass --levels with one name per level, top first",
                )
        elif not isinstance(level, str):
            problems.add(f"{where}: 'level' must be text")
            level = None
        description = obj.get("description")
        if description is not None and not isinstance(description, str):
            problems.add(f"{where}: 'description' must be text")
            description = None
        weight = obj.get("weight")
        if weight is not None and (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not math.isfinite(weight)
            or weight <= 0
        ):
            problems.add(f"{where}: 'weight' must be a number > 0")
            weight = None
        status = obj.get("status")
        if status is not None and status not in STATUSES:
            problems.add(f"{where}: 'status' must be one of {', '.join(STATUSES)}")
            status = None
        node_id = obj.get("id")
        if node_id is not None and not (isinstance(node_id, str) and SLUG_RE.match(node_id)):
            problems.add(
                f"{where}: 'id' {node_id!r} is not a slug",
                None,
                "use lowercase letters, digits, '-' or '_', or leave it out",
            )
            node_id = None
        prereqs = obj.get("prerequisites") or []
        if not isinstance(prereqs, list) or not all(isinstance(p, str) for p in prereqs):
            problems.add(f"{where}: 'prerequisites' must be a list of ids")
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
            problems.add(f"{where}: 'children' must be a list")
            children = []
        for j in reversed(range(len(children))):
            stack.append((children[j], f"{where}.children[{j}]", depth + 1, node.children))
    problems.raise_if_any()
    if not roots:
        raise InputError("the JSON outline is empty", file=path)
    return roots


def _read_node_link(path: Path, data: dict[str, Any]) -> list[OutlineNode]:
    problems = _Problems(path)
    edges = data.get("edges", data.get("links")) or []
    nodes: dict[str, OutlineNode] = {}
    for i, n in enumerate(data.get("nodes") or []):
        if not isinstance(n, dict) or not isinstance(n.get("id"), str):
            problems.add(f"nodes[{i}]: every node needs a string 'id'")
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
    files: list[Path]
    taxonomy: Taxonomy
    nodes: int
    per_level: dict[str, int]


def import_taxonomy(
    source: str | os.PathLike[str],
    into: str | os.PathLike[str],
    *,
    levels: Sequence[str] | None = None,
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
        roots = read_json_outline(source, levels)
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
    known = list(DEFAULT_LEVELS)
    for root in roots:
        for node, _ in root.walk():
            if node.level and node.level not in known:
                known.append(node.level)
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
    )


# -- export ---------------------------------------------------------------------------------

EXPORT_FORMATS = ("json", "graphml", "mermaid", "dot")


def _export_graph(tax: Taxonomy, subtree: str | None = None) -> Any:
    """The taxonomy graph without load-time attributes (file, line) and without None values."""
    import networkx as nx

    nodes = tax.subtree(subtree) if subtree else list(tax)
    keep = {n.id for n in nodes}
    g = nx.DiGraph()
    for n in nodes:
        attrs: dict[str, Any] = {
            "name": n.name,
            "status": n.status,
            "weight": n.weight,
            "depth": n.depth,
        }
        if n.level is not None:
            attrs["level"] = n.level
        if n.description is not None:
            attrs["description"] = n.description
        g.add_node(n.id, **attrs)
    for n in nodes:
        if n.parent is not None and n.parent in keep:
            g.add_edge(n.parent, n.id, kind="child")
    for n in nodes:
        for i, p in enumerate(n.prerequisites):
            if p in keep:  # ``order`` keeps the list's order (edges are grouped by source)
                g.add_edge(p, n.id, kind="prerequisite", order=i)
    return g


def to_node_link(tax: Taxonomy, subtree: str | None = None) -> dict[str, Any]:
    """networkx node-link data (``edges`` key) of the taxonomy."""
    import networkx as nx

    return nx.node_link_data(_export_graph(tax, subtree), edges="edges")


def to_graphml(tax: Taxonomy, subtree: str | None = None) -> str:
    import networkx as nx

    return "\n".join(nx.generate_graphml(_export_graph(tax, subtree))) + "\n"


def _mermaid_ids(ids: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    used: set[str] = set()
    for node_id in ids:
        base = "n_" + node_id.replace("-", "_")  # prefix: avoids keywords such as 'end'
        cand, k = base, 2
        while cand in used:
            cand, k = f"{base}_{k}", k + 1
        used.add(cand)
        out[node_id] = cand
    return out


def to_mermaid(tax: Taxonomy, subtree: str | None = None) -> str:
    """A Mermaid flowchart: solid arrows for the tree, dotted ones for prerequisites."""
    g = _export_graph(tax, subtree)
    mid = _mermaid_ids(g.nodes)
    lines = ["flowchart TD"]
    for node_id, attrs in g.nodes(data=True):
        label = attrs["name"].replace('"', "#quot;")
        lines.append(f'    {mid[node_id]}["{label}"]')
    for a, b, kind in g.edges(data="kind"):
        arrow = "-->" if kind == "child" else "-.->|prerequisite|"
        lines.append(f"    {mid[a]} {arrow} {mid[b]}")
    proposed = [mid[n] for n, s in g.nodes(data="status") if s == "proposed"]
    if proposed:
        lines.append("    classDef proposed stroke-dasharray: 5 5")
        lines.append(f"    class {','.join(proposed)} proposed")
    return "\n".join(lines) + "\n"


def _dot_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(tax: Taxonomy, subtree: str | None = None) -> str:
    """Graphviz dot: boxes for nodes, solid tree edges, dashed prerequisite edges."""
    g = _export_graph(tax, subtree)
    lines = ["digraph taxonomy {", "    rankdir=LR;", "    node [shape=box];"]
    for node_id, attrs in g.nodes(data=True):
        label = attrs["name"] + (f"\n({attrs['level']})" if attrs.get("level") else "")
        style = ", style=dashed" if attrs["status"] == "proposed" else ""
        lines.append(f"    {_dot_str(node_id)} [label={_dot_str(label)}{style}];")
    for a, b, kind in g.edges(data="kind"):
        extra = ' [style=dashed, color=gray40, label="prerequisite"]' if kind != "child" else ""
        lines.append(f"    {_dot_str(a)} -> {_dot_str(b)}{extra};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def export_taxonomy(tax: Taxonomy, fmt: str, subtree: str | None = None) -> str:
    """The taxonomy as text in ``fmt`` (json, graphml, mermaid or dot)."""
    if fmt == "json":
        return json.dumps(to_node_link(tax, subtree), indent=2, ensure_ascii=False) + "\n"
    writers = {"graphml": to_graphml, "mermaid": to_mermaid, "dot": to_dot}
    if fmt not in writers:
        raise TaxonomyError(
            f"unknown export format {fmt!r}", hint=f"use one of {', '.join(EXPORT_FORMATS)}"
        )
    return writers[fmt](tax, subtree)
