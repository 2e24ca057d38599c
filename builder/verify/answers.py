"""Parse and compare quantitative answers with sympy (no I/O, no model, no settings).

Answers are numbers or expressions with LaTeX-ish noise (``$``, ``\\boxed``, ``\\frac``,
units, thousands separators); they are normalised (``builder.verify.answer_text``), then parsed by
``sympy.parsing.sympy_parser`` (``sympy.parsing.latex`` as a fallback when its optional
dependency is installed).

``parse_expr`` evaluates Python, so text is only handed to it after a whitelist check (digits,
operators, parentheses and known names; no quotes, brackets, attributes or dunders), and
expression size and exponent towers are bounded so a hostile answer cannot hang the builder.
``builder.verify.quant`` uses these to check exercises.
"""

from __future__ import annotations

import importlib.util
import math
import random
import re
from collections.abc import Sequence
from typing import Any

import sympy
from sympy.parsing.sympy_parser import (
    convert_xor,
    implicit_multiplication_application,
    parse_expr,
    standard_transformations,
)

from builder.verify.answer_text import (
    CONSTANTS,
    FUNCS,
    GREEK,
    AnswerParseError,
    extract_final_value,
    latex_to_plain,
    rhs,
    sample_answer_text,
    strip_units,
    unwrap,
)

__all__ = [
    "MAX_ANSWER_CHARS",
    "MAX_EXPONENT",
    "TRANSFORMS",
    "Answer",
    "AnswerParseError",
    "answers_match",
    "equivalent",
    "extract_final_value",
    "latex_to_plain",
    "parse_answer",
    "sample_answer_text",
]

Answer = tuple[sympy.Expr, ...]

MAX_ANSWER_CHARS = 300
MAX_EXPONENT = 10_000
TRANSFORMS = standard_transformations + (implicit_multiplication_application, convert_xor)

_SPLIT_MULTI = re.compile(r"\s*(?:,|;|\bor\b|\band\b)\s*")


# -- safe parsing ------------------------------------------------------------------------------

_ALLOWED_CHARS = re.compile(r"^[0-9A-Za-z_+\-*/^().\s!%<>=]*$")
_NAME = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
_SYMBOL_NAME = re.compile(r"^(?:[A-Za-z]|[A-Za-z]_?\d{1,2})$")


def _safe_local_dict(text: str) -> dict[str, Any]:
    names: dict[str, Any] = {}
    for name in _NAME.findall(text):
        if "__" in name:
            raise AnswerParseError(f"name {name!r} is not allowed")
        if name in FUNCS:
            names[name] = FUNCS[name]
        elif name in CONSTANTS:
            names[name] = CONSTANTS[name]
        elif name in GREEK or _SYMBOL_NAME.match(name):
            names[name] = sympy.Symbol(name)
        elif name.isalpha() and len(name) <= 4:
            # implicit multiplication of single letters ("xy"): split into symbols
            for ch in name:
                names.setdefault(ch, CONSTANTS.get(ch, sympy.Symbol(ch)))
        else:
            raise AnswerParseError(f"unknown name {name!r}")
    return names


def _check_size(expr: sympy.Basic) -> None:
    """Refuse expressions whose evaluation could take unbounded time or memory."""
    for node in sympy.preorder_traversal(expr):
        if isinstance(node, sympy.Pow):
            exp = node.exp
            if not exp.free_symbols:
                try:
                    magnitude = abs(complex(exp.evalf(15)))
                except (TypeError, ValueError, OverflowError):
                    raise AnswerParseError("exponent cannot be evaluated") from None
                if not magnitude <= MAX_EXPONENT:  # also catches nan/inf
                    raise AnswerParseError("exponent too large")
        if isinstance(node, sympy.factorial) and node.args[0].is_Number:
            if abs(node.args[0]) > 1000:
                raise AnswerParseError("factorial argument too large")
        if isinstance(node, sympy.Integer) and abs(node) > 10**100:
            raise AnswerParseError("number too large")


def _parse_one(text: str) -> sympy.Expr:
    s = text.strip()
    if not s:
        raise AnswerParseError("empty answer")
    if len(s) > MAX_ANSWER_CHARS:
        raise AnswerParseError("answer too long")
    if not _ALLOWED_CHARS.match(s):
        raise AnswerParseError(f"unexpected characters in {s!r}")
    if re.search(r"[<>=]", s) or "%" in s:
        raise AnswerParseError(f"not a single value: {s!r}")
    if re.search(r"[A-Za-z_]\s*\.|\.\s*[A-Za-z_]", s):
        raise AnswerParseError(f"attribute access is not allowed: {s!r}")
    s = s.replace("^", "**")
    if s.count("**") > 4:
        raise AnswerParseError("too many exponents")
    local = _safe_local_dict(s)
    try:
        expr = parse_expr(
            s,
            local_dict=local,
            global_dict={"__builtins__": {}, **_sympy_globals()},
            transformations=TRANSFORMS,
            evaluate=False,
        )
    except AnswerParseError:
        raise
    except Exception as exc:  # sympy raises many types (SyntaxError, TokenError, TypeError...)
        raise AnswerParseError(f"cannot parse {s!r}: {type(exc).__name__}") from exc
    if not isinstance(expr, sympy.Expr):
        raise AnswerParseError(f"{s!r} is not a value")
    # `{)-i` parses to an Add holding a Tuple: no value, and sympy fails on it later.
    if not all(isinstance(node, sympy.Expr) for node in sympy.preorder_traversal(expr)):
        raise AnswerParseError(f"{s!r} is not a value")
    _check_size(expr)
    return expr


_GLOBALS: dict[str, Any] = {}


def _sympy_globals() -> dict[str, Any]:
    """The names sympy's parser itself needs (Integer, Float, Symbol...), nothing else."""
    if not _GLOBALS:
        for name in ("Integer", "Float", "Rational", "Symbol", "Function", "Mul", "Add", "Pow"):
            _GLOBALS[name] = getattr(sympy, name)
        _GLOBALS["factorial"] = sympy.factorial
    return _GLOBALS


def _latex_fallback(text: str) -> sympy.Expr | None:
    """sympy's own LaTeX parser, when its optional antlr4 runtime is installed."""
    if importlib.util.find_spec("antlr4") is None:
        return None
    try:
        from sympy.parsing.latex import parse_latex
    except ImportError:
        return None
    try:
        expr = parse_latex(text)
    except Exception:  # optional antlr backend missing or unparseable
        return None
    if isinstance(expr, sympy.Expr):
        _check_size(expr)
        return expr
    return None


def parse_answer(text: str | int | float | None) -> list[tuple[Answer, bool]]:
    """All readings of an answer as tuples of sympy expressions (several for "2 or 3").

    Each reading carries whether it was stated as a percentage (so 25% can match 0.25).
    Raises ``AnswerParseError`` when no reading parses.
    """
    if text is None:
        raise AnswerParseError("no answer")
    if isinstance(text, bool):
        raise AnswerParseError("a boolean is not a quantitative answer")
    if isinstance(text, int | float):
        return [((sympy.nsimplify(text) if isinstance(text, int) else sympy.Float(text),), False)]
    raw = str(text)
    if len(raw) > 4 * MAX_ANSWER_CHARS:
        raise AnswerParseError("answer too long")
    s = unwrap(raw)
    parts = [p for p in _split_values(s) if p]
    errors: list[str] = []
    variants = [[rhs(p) for p in parts]] if len(parts) > 1 else []
    variants.append([rhs(s)])
    for variant in variants:
        values: list[sympy.Expr] = []
        percent = False
        for part in variant:
            expr = None
            for candidate, pct in strip_units(part):
                try:
                    expr = _parse_one(candidate)
                except AnswerParseError as exc:
                    errors.append(str(exc))
                    continue
                percent = percent or pct
                break
            if expr is None:
                break
            values.append(expr)
        else:
            return [(tuple(values), percent)]
    fallback = _latex_fallback(raw)
    if fallback is not None:
        return [((fallback,), False)]
    raise AnswerParseError(errors[-1] if errors else f"cannot parse {raw!r}")


def _split_values(s: str) -> list[str]:
    """Top-level split of "2, 3" / "x = 2 or x = 3" / "(1, 2)" into value strings."""
    inner = s.strip()
    if inner.startswith("(") and inner.endswith(")") and _balanced(inner[1:-1]):
        inner = inner[1:-1]
    parts: list[str] = []
    depth = 0
    start = 0
    for m in re.finditer(r"[()]|,|;|\bor\b|\band\b", inner):
        tok = m.group(0)
        if tok == "(":
            depth += 1
        elif tok == ")":
            depth -= 1
        elif depth == 0:
            parts.append(inner[start : m.start()].strip())
            start = m.end()
    parts.append(inner[start:].strip())
    return parts


def _balanced(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += ch == "("
        depth -= ch == ")"
        if depth < 0:
            return False
    return depth == 0


# -- comparison --------------------------------------------------------------------------------


def _numeric(expr: sympy.Expr) -> complex | None:
    try:
        value = complex(sympy.N(expr, 30))
    except (TypeError, ValueError, OverflowError, ZeroDivisionError, AttributeError):
        return None
    if math.isnan(value.real) or math.isnan(value.imag):
        return None
    return value


def _close(a: complex, b: complex, rel_tol: float) -> bool:
    if math.isinf(abs(a)) or math.isinf(abs(b)):
        return a == b
    return abs(a - b) <= max(rel_tol * max(abs(a), abs(b)), 1e-9)


def equivalent(a: sympy.Expr, b: sympy.Expr, rel_tol: float = 1e-6) -> bool:
    """Numbers: equal within ``rel_tol``. Expressions: ``simplify(a - b) == 0``, or equal at
    several random points (simplify cannot prove every identity)."""
    symbols = a.free_symbols | b.free_symbols
    if not symbols:
        va, vb = _numeric(a), _numeric(b)
        if va is None or vb is None:
            return bool(sympy.simplify(a - b) == 0)
        return _close(va, vb, rel_tol)
    try:
        if sympy.simplify(a - b) == 0:
            return True
    except Exception:  # simplify can fail on odd input; fall back to sampling
        pass
    rng = random.Random(0)
    ordered = sorted(symbols, key=lambda s: s.name)
    agreed = 0
    for _ in range(8):
        point = {s: sympy.Float(rng.uniform(0.3, 2.7)) for s in ordered}
        va, vb = _numeric(a.subs(point)), _numeric(b.subs(point))
        if va is None or vb is None:
            continue
        if not _close(va, vb, rel_tol):
            return False
        agreed += 1
    return agreed >= 3


def answers_match(
    a: list[tuple[Answer, bool]], b: list[tuple[Answer, bool]], rel_tol: float = 1e-6
) -> bool:
    """Whether any reading of ``a`` equals any reading of ``b`` (as multisets of values)."""
    for values_a, pct_a in a:
        for values_b, pct_b in b:
            for scale_a, scale_b in _percent_scales(pct_a, pct_b):
                if _same_values(
                    [v * scale_a for v in values_a], [v * scale_b for v in values_b], rel_tol
                ):
                    return True
    return False


def _percent_scales(pct_a: bool, pct_b: bool) -> list[tuple[sympy.Expr, sympy.Expr]]:
    one, hundredth = sympy.Integer(1), sympy.Rational(1, 100)
    scales = [(one, one)]
    if pct_a and not pct_b:
        scales.append((hundredth, one))
    if pct_b and not pct_a:
        scales.append((one, hundredth))
    return scales


def _same_values(xs: Sequence[sympy.Expr], ys: Sequence[sympy.Expr], rel_tol: float) -> bool:
    if len(xs) != len(ys):
        return False
    remaining = list(ys)
    for x in xs:
        for i, y in enumerate(remaining):
            if equivalent(x, y, rel_tol):
                del remaining[i]
                break
        else:
            return False
    return True
