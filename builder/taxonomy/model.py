"""The taxonomy in memory: immutable ``Node`` records and a ``Taxonomy`` with lookups.

A taxonomy is a forest (one tree per discipline file) plus prerequisite edges between any two
nodes. ``Taxonomy`` answers the questions the rest of the builder asks (children, ancestors,
leaves, paths, subtrees, a curriculum order) and exposes the whole thing as a networkx
``DiGraph`` (parent->child edges ``kind="child"``, prerequisite->node edges
``kind="prerequisite"``) for anything else.

Build one with ``load_taxonomy`` (``builder.taxonomy.validate``); the constructor assumes the
nodes are already valid.
"""

from __future__ import annotations

import difflib
import heapq
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.errors import TaxonomyError

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["Node", "Taxonomy", "UnknownNodeError", "STATUSES", "DEFAULT_STATUS"]

STATUSES = ("approved", "proposed")
DEFAULT_STATUS = "approved"


@dataclass(frozen=True, slots=True)
class Node:
    """One taxonomy node as written in its file (plus where it sits in the tree).

    ``depth`` is 0 for a discipline (the top of a file). ``children`` are ids in file order.
    ``file``/``line`` point at the node's first key, for messages.
    """

    id: str
    name: str
    description: str | None
    level: str | None
    weight: float
    prerequisites: tuple[str, ...]
    status: str
    parent: str | None
    children: tuple[str, ...]
    depth: int
    file: Path
    line: int

    @property
    def location(self) -> str:
        """``file:line`` of the node, for messages."""
        return f"{self.file}:{self.line}"


class UnknownNodeError(TaxonomyError, KeyError):
    """An id that is not in the taxonomy (a ``KeyError`` too, so ``dict``-style code works)."""

    def __str__(self) -> str:
        return str(self.problem)


NodeRef = str | Node


def _ref(node: NodeRef) -> str:
    return node.id if isinstance(node, Node) else node


class Taxonomy:
    """A loaded, valid taxonomy. Iterating yields ``Node``s in file order (files sorted by name,
    then preorder within each file); ``tax[id]`` gives a node; ids not present raise
    ``UnknownNodeError`` naming the closest ids.

    Methods that take an id also accept a ``Node``.
    """

    def __init__(
        self,
        root: Path,
        nodes: Iterable[Node],
        files: Iterable[Path] = (),
        *,
        warnings: Iterable[Any] = (),
        external_prerequisites: dict[str, tuple[str, ...]] | None = None,
        levels: Iterable[str] = (),
    ) -> None:
        self.root = Path(root)
        self.files: tuple[Path, ...] = tuple(files)
        # Suspicious but loadable things (``builder.errors.Problem``s), e.g. a level that
        # repeats an ancestor's; ``corpus taxonomy validate`` prints them.
        self.warnings: list[Any] = list(warnings)
        # A single-file load: node id -> its prerequisites that live in other files.
        self.external_prerequisites: dict[str, tuple[str, ...]] = dict(external_prerequisites or {})
        # The known level names it was validated with (edits of it use the same).
        self.levels: tuple[str, ...] = tuple(levels)
        self._order: list[Node] = list(nodes)
        self._nodes: dict[str, Node] = {n.id: n for n in self._order}
        self._index: dict[str, int] = {n.id: i for i, n in enumerate(self._order)}
        # Subtree sizes: a subtree is a contiguous slice of the preorder list.
        size = dict.fromkeys(self._nodes, 1)
        for n in reversed(self._order):
            if n.parent is not None:
                size[n.parent] += size[n.id]
        self._size = size

    # -- mapping-like access ------------------------------------------------------------------

    def __getitem__(self, node_id: NodeRef) -> Node:
        node_id = _ref(node_id)
        try:
            return self._nodes[node_id]
        except KeyError:
            raise self._unknown(node_id) from None

    def __contains__(self, node_id: object) -> bool:
        if isinstance(node_id, Node):
            node_id = node_id.id
        return node_id in self._nodes

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[Node]:
        return iter(self._order)

    def __repr__(self) -> str:
        return f"Taxonomy({str(self.root)!r}, {len(self)} nodes, {len(self.roots())} disciplines)"

    def get(self, node_id: NodeRef, default: Any = None) -> Node | Any:
        return self._nodes.get(_ref(node_id), default)

    def ids(self) -> list[str]:
        """Every id, in file order."""
        return list(self._nodes)

    def _unknown(self, node_id: str) -> UnknownNodeError:
        close = difflib.get_close_matches(str(node_id), self._nodes, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "`corpus taxonomy show` lists ids"
        return UnknownNodeError(f"unknown taxonomy id {node_id!r} in {self.root}", hint=hint)

    # -- tree navigation ----------------------------------------------------------------------

    def roots(self) -> list[Node]:
        """The disciplines (top node of each file), in file order."""
        return [n for n in self._order if n.parent is None]

    def children(self, node_id: NodeRef) -> list[Node]:
        return [self._nodes[c] for c in self[node_id].children]

    def parent(self, node_id: NodeRef) -> Node | None:
        p = self[node_id].parent
        return None if p is None else self._nodes[p]

    def ancestors(self, node_id: NodeRef) -> list[Node]:
        """Ancestors, the discipline first, not including the node itself."""
        out: list[Node] = []
        p = self[node_id].parent
        while p is not None:
            node = self._nodes[p]
            out.append(node)
            p = node.parent
        out.reverse()
        return out

    def path(self, node_id: NodeRef) -> list[Node]:
        """The discipline down to the node itself."""
        return [*self.ancestors(node_id), self[node_id]]

    def path_ids(self, node_id: NodeRef) -> str:
        """Ids from the discipline down, joined by '/' (``Unit.taxonomy_path``)."""
        return "/".join(n.id for n in self.path(node_id))

    def subtree(self, node_id: NodeRef) -> list[Node]:
        """The node and all its descendants, in preorder (file order)."""
        node_id = self[node_id].id
        i = self._index[node_id]
        return self._order[i : i + self._size[node_id]]

    def descendants(self, node_id: NodeRef) -> list[Node]:
        return self.subtree(node_id)[1:]

    def is_ancestor(self, ancestor: NodeRef, node_id: NodeRef) -> bool:
        """True if ``ancestor`` is a proper ancestor of ``node_id``."""
        a = self[ancestor].id
        i, j = self._index[a], self._index[self[node_id].id]
        return i < j < i + self._size[a]

    def leaves(self, node_id: NodeRef | None = None) -> list[Node]:
        """Nodes without children, in file order (of the whole taxonomy, or of one subtree)."""
        nodes = self._order if node_id is None else self.subtree(node_id)
        return [n for n in nodes if not n.children]

    def discipline_of(self, node_id: NodeRef) -> Node:
        """The top node of the node's file."""
        node = self[node_id]
        while node.parent is not None:
            node = self._nodes[node.parent]
        return node

    def file_of(self, node_id: NodeRef) -> Path:
        return self[node_id].file

    def prerequisites(self, node_id: NodeRef) -> list[Node]:
        return [self._nodes[p] for p in self[node_id].prerequisites]

    def dependents(self, node_id: NodeRef) -> list[Node]:
        """Nodes that list this node as a prerequisite, in file order."""
        return [self._nodes[d] for d in self._dependents.get(self[node_id].id, ())]

    @cached_property
    def _dependents(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for n in self._order:
            for p in n.prerequisites:
                out.setdefault(p, []).append(n.id)
        return out

    # -- graph --------------------------------------------------------------------------------

    @cached_property
    def graph(self) -> nx.DiGraph:
        """networkx DiGraph of the taxonomy (built on first use).

        Node attributes: name, level, status, weight, depth, description (when set), file,
        line. Edges: parent->child with ``kind="child"``, prerequisite->node with
        ``kind="prerequisite"``.
        """
        import networkx as nx

        g = nx.DiGraph(root=str(self.root))
        for n in self._order:
            attrs: dict[str, Any] = {
                "name": n.name,
                "level": n.level,
                "status": n.status,
                "weight": n.weight,
                "depth": n.depth,
                "file": str(n.file),
                "line": n.line,
            }
            if n.description is not None:
                attrs["description"] = n.description
            g.add_node(n.id, **attrs)
        for n in self._order:
            if n.parent is not None:
                g.add_edge(n.parent, n.id, kind="child")
        for n in self._order:
            for p in n.prerequisites:
                g.add_edge(p, n.id, kind="prerequisite")
        return g

    def curriculum_order(self, ids: Iterable[NodeRef] | None = None) -> list[Node]:
        """Nodes in an order a learner could follow: parents before children, and every
        prerequisite (with its whole subtree, when possible) before the nodes that need it.

        Deterministic: among nodes that may come next, the earliest in file order goes first,
        so without prerequisites this is plain file order. With ``ids``, the same order
        restricted to those nodes.
        """
        order = self._curriculum
        if ids is None:
            return list(order)
        wanted = {self[i].id for i in ids}
        return [n for n in order if n.id in wanted]

    @cached_property
    def _curriculum(self) -> list[Node]:
        # First try the strong order (a prerequisite's whole subtree comes first); if the
        # prerequisites make that impossible, fall back to plain topological order.
        return self._topological(subtree_complete=True) or self._topological(subtree_complete=False)

    def _topological(self, *, subtree_complete: bool) -> list[Node] | None:
        n_real = len(self._order)
        # Vertex i < n_real is node i; vertex n_real + i is the "end of node i's subtree".
        n_vertices = 2 * n_real if subtree_complete else n_real
        succ: list[list[int]] = [[] for _ in range(n_vertices)]
        indeg = [0] * n_vertices
        index = self._index

        def edge(a: int, b: int) -> None:
            succ[a].append(b)
            indeg[b] += 1

        for i, n in enumerate(self._order):
            if n.parent is not None:
                p = index[n.parent]
                edge(p, i)
                if subtree_complete:
                    edge(n_real + i, n_real + p)
            if subtree_complete:
                edge(i, n_real + i)
            for pre in n.prerequisites:
                edge(n_real + index[pre] if subtree_complete else index[pre], i)
        # End vertices carry priority -1 so they are passed through at once.
        heap = [(-1 if v >= n_real else v, v) for v in range(n_vertices) if indeg[v] == 0]
        heapq.heapify(heap)
        out: list[Node] = []
        while heap:
            _, v = heapq.heappop(heap)
            if v < n_real:
                out.append(self._order[v])
            for w in succ[v]:
                indeg[w] -= 1
                if indeg[w] == 0:
                    heapq.heappush(heap, (-1 if w >= n_real else w, w))
        return out if len(out) == n_real else None

    # -- summaries ----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts for ``corpus taxonomy stats``.

        ``depth`` is the number of levels of the deepest branch (a lone discipline has depth
        1). ``per_level`` maps each level name (``"(unset)"`` for nodes without one) to its
        count, in order of first appearance.
        """
        per_level: Counter[str] = Counter()
        per_depth: Counter[int] = Counter()
        status: Counter[str] = Counter()
        per_discipline: dict[str, int] = {}
        for n in self._order:
            per_level[n.level if n.level is not None else "(unset)"] += 1
            per_depth[n.depth] += 1
            status[n.status] += 1
        for r in self.roots():
            per_discipline[r.id] = self._size[r.id]
        leaves = sum(1 for n in self._order if not n.children)
        return {
            "nodes": len(self._order),
            "leaves": leaves,
            "depth": (max(per_depth) + 1) if per_depth else 0,
            "disciplines": len(per_discipline),
            "files": len(self.files),
            "approved": status.get("approved", 0),
            "proposed": status.get("proposed", 0),
            "prerequisite_edges": sum(len(n.prerequisites) for n in self._order),
            "per_level": dict(per_level),
            "per_depth": [per_depth[d] for d in range(len(per_depth))],
            "per_discipline": per_discipline,
        }
