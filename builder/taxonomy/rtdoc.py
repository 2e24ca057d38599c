"""Round-trip YAML documents for the editor: one discipline file loaded with ruamel.yaml so
that comments, key order, quoting and indentation survive an edit (``builder.taxonomy.edit``).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.util import load_yaml_guess_indent

__all__ = ["Doc", "LIST_LIMIT", "names", "new_yaml", "walk_maps"]

LIST_LIMIT = 8  # how many ids to name in a refusal before "and N more"


def names(ids: list[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:LIST_LIMIT])
    if len(ids) > LIST_LIMIT:
        shown += f" and {len(ids) - LIST_LIMIT} more"
    return shown


def walk_maps(node: Any, parent: Any = None) -> Iterator[tuple[Any, Any]]:
    """(mapping, parent mapping) for every node mapping under ``node``, preorder."""
    stack = [(node, parent)]
    while stack:
        m, p = stack.pop()
        if not isinstance(m, dict):
            continue
        yield m, p
        kids = m.get("children")
        if isinstance(kids, list):
            stack.extend((k, m) for k in reversed(kids))


@dataclass
class Doc:
    """One discipline file loaded in round-trip mode."""

    path: Path
    yaml: YAML
    data: CommentedMap
    index: dict[str, tuple[CommentedMap, CommentedMap | None]] = field(default_factory=dict)
    crlf: bool = False  # the file used Windows line endings: keep them
    bom: bool = False  # the file started with a UTF-8 byte order mark: keep it

    def reindex(self) -> None:
        self.index = {
            m["id"]: (m, p) for m, p in walk_maps(self.data) if isinstance(m.get("id"), str)
        }

    def depth(self, m: CommentedMap) -> int:
        """0 for the file's top node."""
        d = 0
        parent = self.index[m["id"]][1]
        while parent is not None:
            d += 1
            parent = self.index[parent["id"]][1]
        return d

    def dash_column(self, parent: CommentedMap) -> int:
        """Column of the '- ' of ``parent``'s children, as this file is indented."""
        y = self.yaml
        seq_indent = y.sequence_indent if y.sequence_indent is not None else 2
        offset = y.sequence_dash_offset or 0
        return self.depth(parent) * seq_indent + offset

    def dump(self) -> str:
        out = io.StringIO()
        self.yaml.dump(self.data, out)
        text = out.getvalue()
        if self.crlf:
            text = text.replace("\n", "\r\n")
        return ("\ufeff" + text) if self.bom else text


def new_yaml(text: str | None) -> tuple[YAML, Any]:
    y = YAML()  # round-trip
    y.preserve_quotes = True
    y.width = 4096  # never re-wrap long names or descriptions
    if text is None:
        y.indent(mapping=2, sequence=4, offset=2)
        return y, None
    data, indent, block_seq_indent = load_yaml_guess_indent(text, yaml=y)
    if block_seq_indent is None:  # no list in the file yet: our house style, "  - id: ..."
        mapping = indent or 2
        y.indent(mapping=mapping, sequence=mapping + 2, offset=mapping)
    else:
        y.indent(mapping=indent or 2, sequence=indent or 2, offset=block_seq_indent)
    if re.match(r"(?:\s*#[^\n]*\n|\s*\n)*---", text):
        y.explicit_start = True
    return y, data
