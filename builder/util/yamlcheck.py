"""Small pieces shared by the checkers of user YAML (taxonomy and syllabus files).

Both checkers report a wrong value by the name a user knows ("a list", "text"), find the
line of a key or list item from the line-tracking parser (``builder.taxonomy.parse``), and
suggest the closest valid key for a typo. One copy here keeps their messages the same.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

__all__ = ["item_line", "key_line", "type_name", "unknown_key_hint"]


def type_name(value: Any) -> str:
    """The name of a parsed YAML value's type in words a user knows ("a list", "text")."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def key_line(mapping: Any, key: str, default: int | None) -> int | None:
    """The line of ``key`` in a line-tracking mapping, else ``default``."""
    lines = getattr(mapping, "key_lines", None)
    return lines.get(key, default) if lines else default


def item_line(seq: Any, i: int, default: int | None) -> int | None:
    """The line of item ``i`` of a line-tracking list, else ``default``."""
    lines = getattr(seq, "item_lines", None)
    return lines[i] if lines and i < len(lines) else default


def unknown_key_hint(key: Any, valid: Sequence[str], cutoff: float = 0.6) -> str:
    """The hint for an unknown key: the closest valid key if one is close, then all of them."""
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=cutoff)
    listed = f"valid keys: {', '.join(valid)}"
    return f"did you mean {close[0]!r}? {listed}" if close else listed
