"""Fast YAML reading that keeps the line of every mapping, key and list item.

Loading a taxonomy must be quick (a 100,000-node taxonomy in a few seconds) and every problem
must name its line. ruamel.yaml's round-trip loader keeps lines but is pure Python and slow;
its safe constructor is slow too. So we read the parser's event stream and build plain dicts
and lists ourselves, recording 1-based line numbers on the way. The events come from the C
parser of ``ruamel.yaml.clib`` when installed, else PyYAML's libyaml parser, else ruamel's
pure-Python parser (same events, ~20x slower).

Scalars resolve like YAML 1.2's core schema (ruamel's default): ``yes``/``no`` stay strings.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ruamel.yaml import events as ev
from ruamel.yaml.error import MarkedYAMLError

try:  # The C parser, ~10x faster than the pure-Python one (pip install ruamel.yaml.clib).
    from ruamel.yaml.cyaml import CParser as _CParser
except ImportError:  # pragma: no cover - depends on the environment
    _CParser = None

__all__ = [
    "YMap",
    "YSeq",
    "YamlSyntaxError",
    "fast_parser_available",
    "fast_parser_name",
    "parse_yaml",
]


class YMap(dict):
    """A YAML mapping: a dict plus the line it starts on and the line of each key."""

    __slots__ = ("line", "key_lines")

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[Any, int] = {}


class YSeq(list):
    """A YAML sequence: a list plus the line it starts on and the line of each item."""

    __slots__ = ("line", "item_lines")

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []


class YamlSyntaxError(Exception):
    """The text is not YAML (or uses a feature taxonomies don't support). ``line`` is 1-based."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


def fast_parser_available() -> bool:
    """True when a C YAML parser is installed (ruamel.yaml.clib, else PyYAML's libyaml)."""
    return _CParser is not None or _pyyaml_parser() is not None


class _Sentinel:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<no key>"


_NO_KEY = _Sentinel()


_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_TRUE = frozenset({"true", "True", "TRUE"})
_FALSE = frozenset({"false", "False", "FALSE"})
_INT = re.compile(r"[-+]?[0-9]+\Z")
_INT_OTHER = re.compile(r"0o[0-7]+\Z|0x[0-9a-fA-F]+\Z")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?\Z")
_SPECIAL_FLOATS = {
    ".inf": math.inf,
    ".Inf": math.inf,
    ".INF": math.inf,
    "+.inf": math.inf,
    "+.Inf": math.inf,
    "+.INF": math.inf,
    "-.inf": -math.inf,
    "-.Inf": -math.inf,
    "-.INF": -math.inf,
    ".nan": math.nan,
    ".NaN": math.nan,
    ".NAN": math.nan,
}
_NUMBER_START = frozenset("0123456789+-.")


def _resolve_plain(value: str) -> Any:
    """Type of an unquoted scalar under the YAML 1.2 core schema."""
    if value in _NULLS:
        return None
    first = value[0]
    if first in _NUMBER_START:
        if _INT.match(value):
            return int(value)
        if _FLOAT.match(value):
            return float(value)
        if value in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[value]
        if _INT_OTHER.match(value):
            return int(value, 0)
        return value
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return value


_TAGGED = {
    "tag:yaml.org,2002:str": str,
    "tag:yaml.org,2002:int": lambda v: int(v, 0),
    "tag:yaml.org,2002:float": float,
    "tag:yaml.org,2002:bool": lambda v: v in _TRUE,
    "tag:yaml.org,2002:null": lambda v: None,
}


def _scalar(event: Any, line: int) -> Any:
    tag = event.tag
    if tag is not None:
        tag = str(tag)
        if tag != "!":
            convert = _TAGGED.get(tag)
            if convert is None:
                raise YamlSyntaxError(f"unsupported YAML tag {tag}; remove it", line)
            try:
                return convert(event.value)
            except ValueError:
                raise YamlSyntaxError(f"{event.value!r} is not a valid {tag}", line) from None
    if event.style:  # quoted or block scalar: always a string
        return event.value
    return _resolve_plain(event.value)


class _Events:
    """The event classes of one parser implementation (ruamel's or PyYAML's)."""

    def __init__(self, module: Any) -> None:
        self.scalar = module.ScalarEvent
        self.map_start = module.MappingStartEvent
        self.seq_start = module.SequenceStartEvent
        self.map_end = module.MappingEndEvent
        self.seq_end = module.SequenceEndEvent
        self.alias = module.AliasEvent
        self.doc_start = module.DocumentStartEvent
        self.stream_end = module.StreamEndEvent


_RUAMEL_EVENTS = _Events(ev)
_PYYAML: Any = False  # (CParser, events, error class) once looked up; None if unavailable


def _pyyaml_parser() -> Any:
    """PyYAML's libyaml parser, a fallback when ruamel.yaml.clib is missing (same events)."""
    global _PYYAML
    if _PYYAML is False:
        try:
            import yaml.events
            from yaml._yaml import CParser

            _PYYAML = (CParser, _Events(yaml.events), yaml.MarkedYAMLError)
        except (ImportError, AttributeError):
            _PYYAML = None
    return _PYYAML


def _event_source(text: str) -> tuple[Any, Any, _Events]:
    """``(next_event, close, event classes)`` for the fastest parser available."""
    if _CParser is not None:
        parser = _CParser(text)
        return parser.get_event, parser.dispose, _RUAMEL_EVENTS
    fallback = _pyyaml_parser()
    if fallback is not None:
        parser = fallback[0](text)
        return parser.get_event, parser.dispose, fallback[1]
    from ruamel.yaml import YAML  # pure Python: correct but ~20x slower

    events = iter(YAML(typ="safe", pure=True).parse(text))
    return events.__next__, lambda: None, _RUAMEL_EVENTS


def fast_parser_name() -> str:
    """Which YAML parser loads taxonomies: 'ruamel.yaml.clib', 'pyyaml-libyaml' or 'pure-python'."""
    if _CParser is not None:
        return "ruamel.yaml.clib"
    return "pyyaml-libyaml" if _pyyaml_parser() is not None else "pure-python"


def _is_marked_error(exc: BaseException) -> bool:
    """A parse error with a position, from ruamel.yaml or PyYAML (without importing PyYAML)."""
    if isinstance(exc, MarkedYAMLError):
        return True
    return type(exc).__module__.split(".")[0] == "yaml" and hasattr(exc, "problem_mark")


def _syntax_message(exc: Any) -> tuple[str, int]:
    problem = exc.problem or "invalid YAML"
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else 1
    message = f"YAML syntax error: {problem}"
    if exc.context and exc.context_mark is not None:
        message += f" ({exc.context} started on line {exc.context_mark.line + 1})"
    elif exc.context:
        message += f" ({exc.context})"
    return message, line


_HINTS = (
    ("tab character", "indent with spaces, not tabs"),
    ("mapping values are not allowed", "quote values that contain ': ' or fix the indentation"),
    ("cannot start any token", "use spaces, not tabs, and quote values starting with @ or `"),
    ("expected '-' indicator", "every item of a list starts with '- ' at the same indentation"),
    ("expected <block end>", "check the indentation of this line against the lines above"),
)


def parse_yaml(text: str) -> tuple[Any, list[tuple[int, str]]]:
    """Parse one YAML document into YMap/YSeq/scalars.

    Returns ``(value, warnings)`` where warnings are ``(line, message)`` pairs for things that
    parse but are wrong (duplicate keys). Raises ``YamlSyntaxError`` for invalid YAML, several
    documents in one file, or unsupported features (complex keys, unknown tags).
    An empty document gives ``None``.
    """
    problems: list[tuple[int, str]] = []
    anchors: dict[str, Any] = {}
    # Stack of open collections; for mappings, the pending key (or _NO_KEY) rides along.
    stack: list[list[Any]] = []
    root: Any = None
    documents = 0

    def add(value: Any, line: int) -> None:
        nonlocal root
        if not stack:
            root = value
            return
        top = stack[-1]
        container = top[0]
        if type(container) is YSeq:
            container.append(value)
            container.item_lines.append(line)
            return
        key = top[1]
        if key is _NO_KEY:
            if isinstance(value, (YMap, YSeq)):
                raise YamlSyntaxError("complex mapping keys ('? ...') are not supported", line)
            top[1] = value
            top[2] = line
            return
        if key in container:
            problems.append(
                (top[2], f"duplicate key {key!r} (first on line {container.key_lines[key]})")
            )
        else:
            container[key] = value
            container.key_lines[key] = top[2]
        top[1] = _NO_KEY

    next_event, close, classes = _event_source(text)
    scalar_cls, map_cls, seq_cls = classes.scalar, classes.map_start, classes.seq_start
    map_end, seq_end, stream_end = classes.map_end, classes.seq_end, classes.stream_end
    alias_cls, doc_start = classes.alias, classes.doc_start
    try:
        while True:
            event = next_event()
            cls = type(event)
            if cls is scalar_cls:
                line = event.start_mark.line + 1
                if event.tag is None and not event.anchor:
                    value = event.value if event.style else _resolve_plain(event.value)
                    # Fast path: a key or a value inside a mapping.
                    if stack:
                        top = stack[-1]
                        container = top[0]
                        if type(container) is YMap:
                            key = top[1]
                            if key is _NO_KEY:
                                top[1] = value
                                top[2] = line
                            elif key in container:
                                add(value, line)
                            else:
                                container[key] = value
                                container.key_lines[key] = top[2]
                                top[1] = _NO_KEY
                            continue
                    add(value, line)
                    continue
                value = _scalar(event, line)
                if event.anchor:
                    anchors[event.anchor] = value
                add(value, line)
            elif cls is map_cls:
                line = event.start_mark.line + 1
                m = YMap(line)
                if event.anchor:
                    anchors[event.anchor] = m
                add(m, line)
                stack.append([m, _NO_KEY, line])
            elif cls is seq_cls:
                line = event.start_mark.line + 1
                s = YSeq(line)
                if event.anchor:
                    anchors[event.anchor] = s
                add(s, line)
                stack.append([s, None, line])
            elif cls is map_end or cls is seq_end:
                stack.pop()
            elif cls is alias_cls:
                line = event.start_mark.line + 1
                if event.anchor not in anchors:
                    raise YamlSyntaxError(f"unknown alias *{event.anchor}", line)
                add(anchors[event.anchor], line)
            elif cls is doc_start:
                documents += 1
                if documents > 1:
                    raise YamlSyntaxError(
                        "more than one YAML document ('---') in one file; "
                        "put each discipline in its own file",
                        event.start_mark.line + 1,
                    )
            elif cls is stream_end:
                break
    except Exception as exc:
        if type(exc).__name__ == "ReaderError" and hasattr(exc, "position"):
            # A control character or bad byte (ruamel's and PyYAML's reader): no mark, a position.
            line = text.count("\n", 0, max(0, int(exc.position))) + 1
            raise YamlSyntaxError(
                f"YAML syntax error: unacceptable character #x{exc.character:04x}; "
                "remove it (control characters and binary data are not allowed in YAML)",
                line,
            ) from None
        if not _is_marked_error(exc):
            raise
        message, line = _syntax_message(exc)
        lines = text.splitlines()
        if 0 < line <= len(lines) and "\t" in lines[line - 1]:
            message += f"; line {line} has a tab character: indent with spaces, not tabs"
        else:
            for needle, hint in _HINTS:
                if needle in message:
                    message += f"; {hint}"
                    break
        raise YamlSyntaxError(message, line) from None
    finally:
        close()
    return root, problems
