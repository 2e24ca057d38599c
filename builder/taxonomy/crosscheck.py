"""Checks across nodes that need the whole taxonomy read: level names and prerequisite cycles.

Kept apart from ``validate`` (which reads files and checks each node) so each module stays
about one concern. Both work on the validator's raw nodes (``id``, ``parent``, ``level``,
``depth``, ``file``, ``line``, ``prerequisites``) and return ``Problem``s.

**Levels.** A level name is accepted when it is one of the known level names (``[taxonomy]
levels``, default discipline/subject/topic) or a name of a custom vocabulary
(domain/field/subfield, or a ``lesson`` level below topics, as imports write). ``subjet`` next
to ``subject``, or ``topik``, is an error with a did-you-mean: the walker and the syllabus code
give ``subject`` a meaning, so a typo silently changes generation. So is any other unknown name
on a node whose file uses a known name at the same depth (``course`` on one subject made each of
its topics a subject of its own): a level of its own goes into ``[taxonomy] levels``. A level
that repeats an ancestor's level, or differs from what all its siblings use, is a warning.

**Cycles.** A prerequisite means the *whole* prerequisite (its subtree) comes first. So besides
plain cycles (``a`` requires ``b`` requires ``a``) a topic may not require a node that itself
requires the topic's own subject: the subject cannot be finished before that node, nor that
node before the subject. Every cycle is reported once, naming each prerequisite edge on it
with its ``file:line``.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from builder.errors import Problem

__all__ = ["DEFAULT_LEVELS", "check_levels", "close_level", "find_cycles"]

DEFAULT_LEVELS = ("discipline", "subject", "topic")
_LEVEL_CUTOFF = 0.75


def close_level(name: str, levels: Sequence[str]) -> str | None:
    """The known level ``name`` is a typo of, if any (``subjet`` -> ``subject``); ``None`` for
    a known name or one of a custom vocabulary."""
    if name in levels:
        return None
    close = difflib.get_close_matches(name, list(levels), n=1, cutoff=_LEVEL_CUTOFF)
    return close[0] if close else None


def check_levels(
    nodes: Sequence[Any], by_id: dict[str, Any], levels: Sequence[str] = DEFAULT_LEVELS
) -> tuple[list[Problem], list[Problem]]:
    """``(errors, warnings)`` about level names (see the module docstring)."""
    known = set(levels)
    counts = {n.level for n in nodes if n.level is not None}
    errors: list[Problem] = []
    verdict: dict[str, str | None] = {}  # level name -> closest better name (None: fine)
    for name in counts:
        verdict[name] = close_level(name, levels)
    refused: set[str] = set()  # ids whose level is an error: no level warnings about them
    if counts - known:  # some unknown name (the common case, none, costs no pass)
        # Where other nodes of the same depth in the same file use a known name, an unknown
        # name is a mistake (one node renamed), not a vocabulary of its own.
        known_at: dict[tuple[Any, int], Counter[str]] = {}
        if any(verdict[name] is None for name in counts - known):
            for n in nodes:
                if n.level in known:
                    known_at.setdefault((n.file, n.depth), Counter())[n.level] += 1
        for n in nodes:
            if n.level is None or n.level in known:
                continue
            fix = verdict[n.level]
            if fix is not None:
                message = f"unknown level {n.level!r} of {n.id!r}"
                hint = (
                    f"did you mean {fix!r}? known levels: {', '.join(levels)} "
                    "(add others to [taxonomy] levels)"
                )
            elif (n.file, n.depth) in known_at:
                usual = known_at[n.file, n.depth].most_common(1)[0][0]
                message = (
                    f"unknown level {n.level!r} of {n.id!r} (the other nodes at its depth in "
                    f"this file are {usual!r})"
                )
                hint = (
                    f"use level: {usual}, or add {n.level!r} to [taxonomy] levels if it is a "
                    "level of its own"
                )
            else:
                continue  # a file of custom level names
            refused.add(n.id)
            errors.append(Problem(message, n.file, n.level_line, hint))
    warnings: list[Problem] = []
    kid_levels: dict[str, Counter[str | None]] = {}  # parent id -> levels of its children
    for n in nodes:
        if n.level is None or n.id in refused:
            continue
        above = by_id.get(n.parent) if n.parent is not None else None
        while above is not None:
            if above.level == n.level:
                warnings.append(
                    Problem(
                        f"level {n.level!r} of {n.id!r} is also the level of its ancestor "
                        f"{above.id!r}: levels go one step down per depth",
                        n.file,
                        n.level_line,
                        "fix the level or remove it",
                    )
                )
                break
            above = by_id.get(above.parent) if above.parent is not None else None
        else:
            parent = by_id.get(n.parent) if n.parent is not None else None
            if parent is None:
                continue
            levels = kid_levels.get(parent.id)
            if levels is None:
                levels = Counter(by_id[c].level for c in parent.children if c in by_id)
                kid_levels[parent.id] = levels
            # Every sibling (two or more) agrees on one level, and this node has another.
            if len(levels) == 2 and levels[n.level] == 1:
                usual = next(k for k in levels if k != n.level)
                if usual is not None and levels[usual] >= 2:
                    warnings.append(
                        Problem(
                            f"level {n.level!r} of {n.id!r} differs from its siblings' "
                            f"level {usual!r}",
                            n.file,
                            n.level_line,
                            f"use level: {usual} unless this is intended",
                        )
                    )
    return errors, warnings


def find_cycles(
    nodes: Sequence[Any], by_id: dict[str, Any], edges: Sequence[tuple[str, str, Path, int]]
) -> list[Problem]:
    """One problem per cycle of prerequisite edges ``(prerequisite, node, file, line)``.

    The graph has two vertices per node, its start ``(id, 0)`` and the end of its subtree
    ``(id, 1)``; a parent starts before its children and ends after them, and a prerequisite's
    end comes before the node's start (the whole prerequisite first).
    """
    if not edges:
        return []
    ids = [n.id for n in nodes if by_id.get(n.id) is n]
    index = {node_id: i for i, node_id in enumerate(ids)}
    # Vertex 2*i is the start of node i, 2*i+1 the end of its subtree.
    size = 2 * len(ids)
    succ: list[list[int]] = [[] for _ in range(size)]
    indeg = [0] * size
    for i, node_id in enumerate(ids):
        succ[2 * i].append(2 * i + 1)
        indeg[2 * i + 1] += 1
        parent = by_id[node_id].parent
        p = index.get(parent) if parent is not None else None
        if p is not None:
            succ[2 * p].append(2 * i)
            succ[2 * i + 1].append(2 * p + 1)
            indeg[2 * i] += 1
            indeg[2 * p + 1] += 1
    for pre, node_id, _, _ in edges:
        a, b = 2 * index[pre] + 1, 2 * index[node_id]
        succ[a].append(b)
        indeg[b] += 1
    ready = [v for v in range(size) if indeg[v] == 0]
    done = 0
    while ready:
        v = ready.pop()
        done += 1
        for w in succ[v]:
            indeg[w] -= 1
            if indeg[w] == 0:
                ready.append(w)
    if done == size:
        return []
    import networkx as nx

    stuck = {v for v in range(size) if indeg[v] > 0}
    g = nx.DiGraph()
    for v in stuck:
        for w in succ[v]:
            if w in stuck:
                g.add_edge((ids[v // 2], v % 2), (ids[w // 2], w % 2))
    where = {(pre, node): (file, line) for pre, node, file, line in edges}
    order = {node_id: i for i, node_id in enumerate(ids)}
    problems: list[Problem] = []
    for comp in nx.strongly_connected_components(g):
        if len(comp) < 2:
            continue
        cycle = _shortest_cycle(g, comp, key=lambda v: (order[v[0]], v[1]))
        steps: list[str] = []
        prereq_edges: list[tuple[str, str]] = []
        chain: list[str] = []
        for (a, ka), (b, kb) in cycle:
            if not chain or chain[-1] != a:
                chain.append(a)
            if ka == 1 and kb == 0 and (a, b) in where:
                prereq_edges.append((a, b))
                file, line = where[(a, b)]
                steps.append(f"{b!r} requires {a!r} ({file}:{line})")
            elif ka == kb == 0:
                steps.append(f"{b!r} is part of {a!r}")
            elif ka == kb == 1:
                steps.append(f"{a!r} is part of {b!r}")
        chain.append(chain[0])
        prereq_edges.sort(key=lambda e: (str(where[e][0]), where[e][1]))
        first_file, first_line = where[prereq_edges[0]]
        problems.append(
            Problem(
                f"prerequisite cycle: {' -> '.join(chain)}: {'; '.join(steps)}",
                first_file,
                first_line,
                "remove one of these prerequisites",
            )
        )
    return problems


def _shortest_cycle(g: Any, comp: set[Any], key: Any, tries: int = 20) -> list[tuple[Any, Any]]:
    """The shortest cycle (as edges) through one of the first ``tries`` vertices of a strongly
    connected component: the one a curator can read and fix."""
    from collections import deque

    best: list[Any] | None = None
    for start in sorted(comp, key=key)[:tries]:
        prev: dict[Any, Any] = {start: None}
        queue = deque([start])
        found = None
        while queue and found is None:
            v = queue.popleft()
            for w in g.successors(v):
                if w not in comp:
                    continue
                if w == start:
                    found = v
                    break
                if w not in prev:
                    prev[w] = v
                    queue.append(w)
        if found is None:
            continue
        path = [found]
        while prev[path[-1]] is not None:
            path.append(prev[path[-1]])
        path.reverse()  # start ... found
        if best is None or len(path) < len(best):
            best = path
    assert best is not None  # a strongly connected component of 2+ vertices has a cycle
    return list(zip(best, best[1:] + best[:1], strict=True))
