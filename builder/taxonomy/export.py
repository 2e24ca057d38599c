"""Export a taxonomy: JSON (networkx node-link), GraphML, Mermaid or Graphviz dot.

Export builds on ``Taxonomy.graph``: JSON is networkx node-link data (``edges`` key), which
``networkx.node_link_graph(data, edges="edges")`` reads back and which ``corpus taxonomy
import`` accepts too, so ``export --format json`` -> ``import`` reproduces the taxonomy.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from builder.errors import TaxonomyError
from builder.taxonomy.model import Taxonomy

__all__ = [
    "EXPORT_FORMATS",
    "export_taxonomy",
    "to_dot",
    "to_graphml",
    "to_mermaid",
    "to_node_link",
]

EXPORT_FORMATS = ("json", "graphml", "mermaid", "dot")


def _export_graph(tax: Taxonomy, subtree: str | None = None) -> Any:
    """The taxonomy graph without load-time attributes (file, line) and without None values.

    A subtree keeps its prerequisite edges to nodes outside it: those nodes come along with
    ``external=True`` (and no tree edges), so the export says what the subtree depends on.
    """
    import networkx as nx

    nodes = tax.subtree(subtree) if subtree else list(tax)
    keep = {n.id for n in nodes}
    outside = [
        tax[p] for p in dict.fromkeys(p for n in nodes for p in n.prerequisites) if p not in keep
    ]
    g = nx.DiGraph()
    for n in [*nodes, *outside]:
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
        if n.id not in keep:
            attrs["external"] = True
        g.add_node(n.id, **attrs)
    for n in nodes:
        if n.parent is not None and n.parent in keep:
            g.add_edge(n.parent, n.id, kind="child")
    for n in nodes:
        for i, p in enumerate(n.prerequisites):
            # ``order`` keeps the list's order (edges are grouped by source)
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
    external = [mid[n] for n, e in g.nodes(data="external") if e]
    if external:  # prerequisites outside an exported subtree
        lines.append("    classDef external fill:#eee,color:#666")
        lines.append(f"    class {','.join(external)} external")
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
        if attrs.get("external"):  # a prerequisite outside the exported subtree
            style += ", color=gray60, fontcolor=gray40"
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
