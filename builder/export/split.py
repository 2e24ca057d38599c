"""Train/test splits by taxonomy node, so no node (at a chosen level) is in both.

Documents about the same node share phrasing, examples and answers; a random row split puts
siblings on both sides and flatters the test score. Here the unit of splitting is the node:
``node_key`` cuts ``taxonomy_path`` at the chosen depth, and ``assign_test`` puts a node in
test when a seeded sha256 of it falls below ``test_fraction``. The hash depends only on the
seed and the node, so a node keeps its side when the corpus grows or is filtered
differently. Only when the threshold leaves one side empty (a handful of nodes) is the node
nearest the threshold moved across, so that both splits exist.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import polars as pl


def node_key_expr(depth: int | None) -> pl.Expr:
    """The split node of each row: the first ``depth`` components of ``taxonomy_path``
    (the whole path when None)."""
    path = pl.col("taxonomy_path").fill_null("")
    if depth is None:
        return path
    return path.str.split("/").list.head(depth).list.join("/")


def node_score(node: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, node)."""
    digest = hashlib.sha256(f"{seed}\x00{node}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_test(nodes: Iterable[str], fraction: float, seed: int) -> frozenset[str]:
    """The nodes that go to the test split (see the module docstring)."""
    scored = sorted((node_score(n, seed), n) for n in set(nodes))
    test = {n for s, n in scored if s < fraction}
    if len(scored) >= 2:
        if not test:
            test = {scored[0][1]}
        elif len(test) == len(scored):
            test.discard(scored[-1][1])
    return frozenset(test)
