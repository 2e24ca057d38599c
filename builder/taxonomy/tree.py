"""Comment-preserving surgery on round-trip taxonomy trees: attach a node, add a key.

Used by ``TaxonomyEditor``; kept apart because these moves only touch ruamel containers and
their comment tokens, never the editor's bookkeeping of files and ids.
"""

from __future__ import annotations

from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from builder.taxonomy import comments as cm
from builder.taxonomy.rtdoc import Doc


def insert_key(m: CommentedMap, key: str, value: Any) -> None:
    """Insert ``key`` before ``children`` (so children stay last), else at the end."""
    if key != "children" and "children" in m:
        m.insert(list(m).index("children"), key, value)
    else:
        m[key] = value


def children_of(m: CommentedMap) -> CommentedSeq:
    """``m``'s children list, created (block style) if missing."""
    kids = m.get("children")
    if not isinstance(kids, CommentedSeq):
        kids = CommentedSeq()
        m.fa.set_block_style()  # children don't fit a one-line {...}
        insert_key(m, "children", kids)
    elif not kids:
        kids.fa.set_block_style()
    return kids


def attach(doc: Doc, parent: CommentedMap, m: CommentedMap, leading: list[cm.Comment]) -> None:
    """Append ``m`` to ``parent``'s children with ``leading`` comment lines above it.

    Comments below the old last child belong after the list, so they go below ``m``.
    """
    kids = children_of(parent)
    after: list[cm.Comment] = []
    if kids and kids.fa.flow_style() is not True:
        after = cm.pop_trailing(kids[-1]) + cm.pop_list_end(kids)
    kids.append(m)
    if kids.fa.flow_style() is not True:
        cm.set_leading(kids, len(kids) - 1, leading, doc.dash_column(parent))
        cm.push_after_item(kids, len(kids) - 1, after)


def after_node(doc: Doc, m: CommentedMap, comments: list[cm.Comment]) -> None:
    """Put comment lines just below the node ``m`` (whose last line may have changed)."""
    if not comments:
        return
    parent = doc.index[m["id"]][1] if isinstance(m.get("id"), str) else None
    if parent is not None and isinstance(parent.get("children"), CommentedSeq):
        kids = parent["children"]
        i = next((k for k, item in enumerate(kids) if item is m), None)
        if i is not None and kids.fa.flow_style() is not True:
            cm.push_after_item(kids, i, comments)
            return
    cm.push_after_node(m, comments)
