"""Keep YAML comments in place when list items move between lists.

ruamel.yaml attaches a comment to the token *before* it, so the comment lines above item
``i+1`` of a list are stored at the end of item ``i`` (on its last scalar, or at the end of
its last nested list). Moving or deleting item ``i`` would then drag the next item's comment
along. These helpers detach comments by where they are on the page instead:

* the *leading* comments of an item are the comment and blank lines just above it (they move
  with the item);
* the *trailing* comments of an item are those just below its last line; they belong to
  whatever follows it and stay behind.

A comment is ``(text, column)``; text is ``""`` for a blank line.
"""

from __future__ import annotations

from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark
from ruamel.yaml.tokens import CommentToken

Comment = tuple[str, int]

__all__ = [
    "Comment",
    "pop_head",
    "pop_leading",
    "pop_list_end",
    "pop_trailing",
    "push_after_item",
    "push_after_node",
    "set_head",
    "set_leading",
]


def _collection(value: Any) -> bool:
    return isinstance(value, (CommentedMap, CommentedSeq))


def _lines(value: str, first_col: int | None) -> list[Comment]:
    """Comment lines of a token's text; the first line starts at ``first_col`` (None: at its
    own indentation, like every later line)."""
    parts = value.split("\n")
    if parts and parts[-1] == "":
        parts.pop()
    out: list[Comment] = []
    for k, part in enumerate(parts):
        text = part.strip()
        spaces = len(part) - len(part.lstrip(" "))
        col = first_col + spaces if k == 0 and first_col is not None else spaces
        out.append((text, col if text else 0))
    return out


def _token_col(token: Any) -> int:
    mark = getattr(token, "start_mark", None)
    return getattr(mark, "column", 0) or 0


def _from_tokens(tokens: Any) -> list[Comment]:
    out: list[Comment] = []
    for token in tokens or ():
        if token is not None:
            out.extend(_lines(token.value, _token_col(token)))
    return out


def _tokens(comments: list[Comment], col: int | None = None) -> list[CommentToken]:
    """One token per line; ``col`` overrides the column of non-blank lines."""
    out = []
    for text, c in comments:
        if text:
            out.append(CommentToken(text + "\n", CommentMark(c if col is None else col)))
        else:
            out.append(CommentToken("\n", CommentMark(0)))
    return out


def _set_end(node: Any, tokens: list[Any]) -> None:
    """Comments below a collection. ruamel only emits them when ``ca.comment`` is a list."""
    node.ca.end = tokens
    if node.ca.comment is None:
        node.ca.comment = [None, None]
    while len(node.ca.comment) < 2:
        node.ca.comment.append(None)


def _last_chain(node: Any) -> list[Any]:
    """The node, its last value, that value's last value... while they are collections."""
    chain = []
    while _collection(node) and len(node):
        chain.append(node)
        node = node[next(reversed(node))] if isinstance(node, CommentedMap) else node[-1]
    return chain


def pop_trailing(node: Any) -> list[Comment]:
    """Remove and return the comment lines just below ``node``'s last line.

    An end-of-line comment on the last line stays where it is.
    """
    out: list[Comment] = []
    for c in reversed(_last_chain(node)):
        if isinstance(c, CommentedMap):
            key, pos = next(reversed(c)), 2
        else:
            key, pos = len(c) - 1, 0
        entry = c.ca.items.get(key)
        if entry and not _collection(c[key]) and len(entry) > pos and entry[pos] is not None:
            token = entry[pos]
            parts = token.value.split("\n", 1)
            eol = parts[0]
            rest = parts[1] if len(parts) > 1 else ""
            out.extend(_lines(rest, None) if rest else [])
            if eol.strip():
                token.value = eol + "\n"
            else:
                entry[pos] = None
        if c.ca.end:
            out.extend(_from_tokens(c.ca.end))
            c.ca.end = []
    return out


def pop_list_end(seq: CommentedSeq) -> list[Comment]:
    """Remove and return the comments stored at the end of a list (below its last item)."""
    out = _from_tokens(seq.ca.end)
    seq.ca.end = []
    return out


def pop_leading(parent: CommentedMap, key: str, seq: CommentedSeq, i: int) -> list[Comment]:
    """Remove and return the comment lines just above item ``i`` of ``parent[key]``."""
    out: list[Comment] = []
    seen: set[int] = set()
    if i == 0:
        entry = parent.ca.items.get(key)
        if entry and len(entry) > 3 and entry[3]:
            seen.update(id(t) for t in entry[3])
            out.extend(_from_tokens(entry[3]))
            entry[3] = None
        if seq.ca.comment and len(seq.ca.comment) > 1 and seq.ca.comment[1]:
            out.extend(_from_tokens([t for t in seq.ca.comment[1] if id(t) not in seen]))
            seq.ca.comment[1] = None
    else:
        out.extend(pop_trailing(seq[i - 1]))
    entry = seq.ca.items.get(i)
    if entry and len(entry) > 1 and entry[1]:
        out.extend(_from_tokens(entry[1]))
        entry[1] = None
    item = seq[i]
    if isinstance(item, CommentedMap):
        out.extend(pop_head(item))
    return out


def set_leading(seq: CommentedSeq, i: int, comments: list[Comment], col: int | None) -> None:
    """Put comment lines above item ``i`` (before any already there)."""
    if not comments:
        return
    entry = seq.ca.items.setdefault(i, [None, None, None, None])
    entry[1] = _tokens(comments, col) + list(entry[1] or [])


def push_after_item(seq: CommentedSeq, i: int, comments: list[Comment]) -> None:
    """Put comment lines just below item ``i``: above item ``i+1``, or at the list's end."""
    if not comments:
        return
    if i + 1 < len(seq):
        set_leading(seq, i + 1, comments, None)
    else:
        _set_end(seq, _tokens(comments) + list(seq.ca.end or []))


def push_after_node(node: CommentedMap, comments: list[Comment]) -> bool:
    """Put comment lines below a mapping's last line (on its last scalar). False if it can't."""
    if not comments:
        return True
    chain = _last_chain(node)
    if not chain:
        return False
    c = chain[-1]
    if isinstance(c, CommentedSeq) and c.fa.flow_style() is not True:
        _set_end(c, list(c.ca.end or []) + _tokens(comments))
        return True
    if isinstance(c, CommentedMap) and not _collection(c[next(reversed(c))]):
        key = next(reversed(c))
        entry = c.ca.items.setdefault(key, [None, None, None, None])
        eol = entry[2].value.split("\n", 1)[0] if entry[2] is not None else ""
        rest = "".join((" " * col + text if text else "") + "\n" for text, col in comments)
        entry[2] = CommentToken(eol + "\n" + rest, CommentMark(0))
        return True
    return False


def pop_head(node: CommentedMap) -> list[Comment]:
    """Remove and return the comments stored before a mapping (e.g. a file's header)."""
    if node.ca.comment and len(node.ca.comment) > 1 and node.ca.comment[1]:
        out = _from_tokens(node.ca.comment[1])
        node.ca.comment[1] = None
        return out
    return []


def set_head(node: CommentedMap, comments: list[Comment]) -> None:
    """Put comment lines before a top-level mapping (the top of its file)."""
    if not comments:
        return
    while comments and not comments[0][0]:
        comments = comments[1:]  # no blank lines at the very top of a file
    if node.ca.comment is None:
        node.ca.comment = [None, None]
    node.ca.comment[1] = _tokens(comments, 0) + list(node.ca.comment[1] or [])
