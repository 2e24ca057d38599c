"""Parse and compare quantitative answers with sympy (no I/O, no model, no settings).

Answers are numbers or expressions with LaTeX-ish noise (``$``, ``\\boxed``, ``\\frac``,
units, thousands separators); they are normalised, then parsed by
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

Answer = tuple[sympy.Expr, ...]

MAX_ANSWER_CHARS = 300
MAX_EXPONENT = 10_000
TRANSFORMS = standard_transformations + (implicit_multiplication_application, convert_xor)

_FUNCS = {
    "sqrt": sympy.sqrt,
    "log": sympy.log,
    "ln": sympy.log,
    "exp": sympy.exp,
    "sin": sympy.sin,
    "cos": sympy.cos,
    "tan": sympy.tan,
    "cot": sympy.cot,
    "sec": sympy.sec,
    "csc": sympy.csc,
    "asin": sympy.asin,
    "acos": sympy.acos,
    "atan": sympy.atan,
    "arcsin": sympy.asin,
    "arccos": sympy.acos,
    "arctan": sympy.atan,
    "sinh": sympy.sinh,
    "cosh": sympy.cosh,
    "tanh": sympy.tanh,
    "abs": sympy.Abs,
    "Abs": sympy.Abs,
    "factorial": sympy.factorial,
    "binomial": sympy.binomial,
}
_CONSTANTS = {"pi": sympy.pi, "e": sympy.E, "E": sympy.E, "oo": sympy.oo, "inf": sympy.oo}
_GREEK = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron rho sigma "
    "tau upsilon phi chi psi omega"
).split()
_LATEX_WORDS = {
    r"\pi": " pi ",
    r"\infty": " oo ",
    r"\cdot": "*",
    r"\times": "*",
    r"\div": "/",
    r"\ln": " ln ",
    r"\log": " log ",
    r"\exp": " exp ",
    r"\sin": " sin ",
    r"\cos": " cos ",
    r"\tan": " tan ",
    r"\cot": " cot ",
    r"\sec": " sec ",
    r"\csc": " csc ",
    r"\arcsin": " asin ",
    r"\arccos": " acos ",
    r"\arctan": " atan ",
    r"\sinh": " sinh ",
    r"\cosh": " cosh ",
    r"\tanh": " tanh ",
    r"\approx": "=",
    r"\le": "<=",
    r"\ge": ">=",
    r"\pm": "+",
}
_UNICODE = {
    "−": "-",
    "–": "-",
    "×": "*",
    "·": "*",
    "⋅": "*",
    "÷": "/",
    "π": " pi ",
    "∞": " oo ",
    "²": "^2",
    "³": "^3",
    "≈": "=",
    "\u00a0": " ",
    "\u2009": " ",
    "\u202f": " ",
}
# Units and other words that may follow a number (case-sensitive SI symbols included).
_UNIT_WORD = r"(?:[A-Za-zµΩ°%$€£]+(?:\^?-?\d)?)"  # m, s^2, kg, m2, °C, %, dollars, units
_UNIT_TAIL = re.compile(
    rf"^\s*{_UNIT_WORD}(?:\s*(?:/|\*|per|\s)\s*{_UNIT_WORD})*\s*\.?\s*$", re.IGNORECASE
)
_NUMBER_HEAD = re.compile(
    r"^\s*(?P<num>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
    r"(?:\s*\*\s*10\s*(?:\^|\*\*)\s*\(?[-+]?\d+\)?)?)"
    r"(?P<tail>.*)$"
)
_SI_UNITS = {
    "m",
    "s",
    "g",
    "kg",
    "mg",
    "cm",
    "mm",
    "km",
    "nm",
    "J",
    "kJ",
    "N",
    "W",
    "kW",
    "V",
    "A",
    "K",
    "L",
    "mL",
    "Hz",
    "Pa",
    "kPa",
    "mol",
    "h",
    "min",
    "C",
    "F",
    "T",
    "eV",
    "ms",
    "lb",
    "ft",
    "in",
    "yd",
    "mi",
    "oz",
    "%",
}
_SPLIT_MULTI = re.compile(r"\s*(?:,|;|\bor\b|\band\b)\s*")


class AnswerParseError(ValueError):
    """The text is not an answer this module can read (or is unsafe to evaluate)."""


# -- normalisation ---------------------------------------------------------------------------


def _braced(text: str, start: int) -> tuple[str, int]:
    """The content of the ``{...}`` group starting at ``text[start] == "{"``, and the end."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
    raise AnswerParseError("unbalanced braces")


def _last_command_arg(text: str, command: str) -> str | None:
    """The argument of the last ``\\command{...}`` in ``text`` (balanced braces)."""
    idx = text.rfind(command + "{")
    if idx < 0:
        return None
    try:
        content, _end = _braced(text, idx + len(command))
    except AnswerParseError:
        return None
    return content


def _replace_command(text: str, command: str, fn: Any, nargs: int) -> str:
    """Replace every ``\\command{a}{b}`` by ``fn(a, b)`` (innermost handled by recursion)."""
    out = []
    i = 0
    while True:
        j = text.find(command, i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        k = j + len(command)
        if k < len(text) and text[k].isalpha():  # \fracx is another command
            out.append(text[i:k])
            i = k
            continue
        out.append(text[i:j])
        args = []
        optional = None
        while k < len(text) and text[k] == " ":
            k += 1
        if command == r"\sqrt" and k < len(text) and text[k] == "[":
            close = text.find("]", k)
            if close < 0:
                raise AnswerParseError("unbalanced [ in \\sqrt")
            optional = text[k + 1 : close]
            k = close + 1
        for _ in range(nargs):
            while k < len(text) and text[k] == " ":
                k += 1
            if k < len(text) and text[k] == "{":
                arg, k = _braced(text, k)
            elif k < len(text):  # \frac12 -> single-character arguments
                arg, k = text[k], k + 1
            else:
                raise AnswerParseError(f"{command} is missing an argument")
            args.append(_replace_command(arg, command, fn, nargs))
        out.append(fn(*args, optional=optional))
        i = k


def latex_to_plain(text: str) -> str:
    """Turn the LaTeX-ish notation answers use into plain sympy syntax."""
    s = text
    for k, v in _UNICODE.items():
        s = s.replace(k, v)
    s = s.replace("\\$", " ").replace("\\ ", " ")
    s = s.replace("$", " ").replace(r"\(", " ").replace(r"\)", " ")
    s = s.replace(r"\[", " ").replace(r"\]", " ").replace(r"\!", "").replace(r"\%", "%")
    for space in (r"\,", r"\;", r"\:", r"\quad", r"\qquad", "~"):
        s = s.replace(space, " ")
    s = s.replace(r"\left", "").replace(r"\right", "").replace(r"\displaystyle", "")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?", " deg ", s)
    s = s.replace("°", " deg ")
    s = re.sub(r"\\(?:text|mathrm|mathbf|operatorname|textbf|mbox)\s*\{([^{}]*)\}", r" \1 ", s)
    for frac in (r"\dfrac", r"\tfrac", r"\frac"):
        s = _replace_command(s, frac, lambda a, b, optional=None: f"(({a})/({b}))", 2)
    s = _replace_command(
        s,
        r"\sqrt",
        lambda a, optional=None: f"(({a})**(1/({optional})))" if optional else f"sqrt({a})",
        1,
    )
    s = re.sub(r"√\s*\(", "sqrt(", s)
    s = re.sub(r"√\s*(\d+(?:\.\d+)?|[A-Za-z])", r"sqrt(\1)", s)
    for k in sorted(_LATEX_WORDS, key=len, reverse=True):
        s = re.sub(re.escape(k) + r"(?![A-Za-z])", lambda _m, k=k: _LATEX_WORDS[k], s)
    for name in _GREEK:
        s = re.sub(r"\\" + name + r"(?![A-Za-z])", f" {name} ", s)
    s = s.replace("{", "(").replace("}", ")")
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # thousands separators: 1,234,567
    return " ".join(s.split())


def _unwrap(text: str) -> str:
    """Drop \\boxed{}, "Answer:", LaTeX and the final full stop around an answer."""
    s = text.strip()
    boxed = _last_command_arg(s, r"\boxed") or _last_command_arg(s, r"\fbox")
    if boxed is not None:
        s = boxed
    s = re.sub(r"^\s*(?:final\s+answer|answer|ans)\s*[:=]?\s*", "", s, flags=re.IGNORECASE)
    s = latex_to_plain(s)
    return s.strip().rstrip(".").strip()


def _rhs(s: str) -> str:
    """ "x = 5" and "v = 2 * 3 = 6" -> the last right-hand side."""
    if "=" in s:
        s = s.rsplit("=", 1)[1]
    return s.strip().rstrip(".").strip()


def _strip_units(s: str) -> list[tuple[str, bool]]:
    """Readings of ``s`` without trailing units: [(text, was_percent)], most literal first."""
    m = _NUMBER_HEAD.match(s)
    if not m:
        return [(s, False)]
    tail = m.group("tail")
    if not tail.strip():
        return [(s, False)]
    if not _UNIT_TAIL.match(tail):
        return [(s, False)]
    word = tail.strip().rstrip(".").strip()
    for token in re.findall(r"[A-Za-z]+", word):
        if token in _FUNCS or token in _CONSTANTS or token in _GREEK:
            return [(s, False)]  # "5 pi" is a value, not a unit
    spaced = tail[:1].isspace()
    known = word in _SI_UNITS or word.split("/")[0].split("^")[0] in _SI_UNITS
    if not (spaced or known or len(word) > 1):
        return [(s, False)]  # "5x": a symbolic answer, not a unit
    num = m.group("num")
    percent = "%" in word or "percent" in word.lower()
    return [(num, percent)]


# -- safe parsing ------------------------------------------------------------------------------

_ALLOWED_CHARS = re.compile(r"^[0-9A-Za-z_+\-*/^().\s!%<>=]*$")
_NAME = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
_SYMBOL_NAME = re.compile(r"^(?:[A-Za-z]|[A-Za-z]_?\d{1,2})$")


def _safe_local_dict(text: str) -> dict[str, Any]:
    names: dict[str, Any] = {}
    for name in _NAME.findall(text):
        if "__" in name:
            raise AnswerParseError(f"name {name!r} is not allowed")
        if name in _FUNCS:
            names[name] = _FUNCS[name]
        elif name in _CONSTANTS:
            names[name] = _CONSTANTS[name]
        elif name in _GREEK or _SYMBOL_NAME.match(name):
            names[name] = sympy.Symbol(name)
        elif name.isalpha() and len(name) <= 4:
            # implicit multiplication of single letters ("xy"): split into symbols
            for ch in name:
                names.setdefault(ch, _CONSTANTS.get(ch, sympy.Symbol(ch)))
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
    s = _unwrap(raw)
    parts = [p for p in _split_values(s) if p]
    errors: list[str] = []
    variants = [[_rhs(p) for p in parts]] if len(parts) > 1 else []
    variants.append([_rhs(s)])
    for variant in variants:
        values: list[sympy.Expr] = []
        percent = False
        for part in variant:
            expr = None
            for candidate, pct in _strip_units(part):
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


# -- where the final value of a worked solution is -----------------------------------------

_ANSWER_PHRASE = re.compile(
    r"(?:final\s+answer|the\s+answer|answer)\s*(?:is|:|=|would\s+be|will\s+be)\s*:?\s*(.+)",
    re.IGNORECASE,
)
_CUT = re.compile(
    r"(?<!\d)\.(?:\s|$)|\.\s+(?=[A-Z])|,\s+(?=[A-Za-z]{3,})|;|\s+\((?=[A-Za-z]{3,})"
    r"|\s+(?:which|since|because|where|thus|hence|so\s+that)\b",
)


def _cut_sentence(text: str) -> str:
    text = text.strip().splitlines()[0] if text.strip() else ""
    parts = _CUT.split(text, maxsplit=1)
    return parts[0].strip() if parts else ""


def extract_final_value(text: str | None) -> str | None:
    """The final value a worked solution (or a model's reply) states, as text, or None.

    Looks, in order, for the last ``\\boxed{...}``, the last "answer is/:" phrase, and the
    right-hand side of the last ``=`` (or ``≈``) in the text.
    """
    if not text or not text.strip():
        return None
    for cmd in (r"\boxed", r"\fbox"):
        boxed = _last_command_arg(text, cmd)
        if boxed is not None and boxed.strip():
            return boxed.strip()
    phrases = list(_ANSWER_PHRASE.finditer(text))
    if phrases:
        value = _cut_sentence(phrases[-1].group(1))
        if value:
            return value
    lines = [ln for ln in text.splitlines() if re.search(r"=|≈|\\approx", ln)]
    if not lines:
        return None
    line = latex_to_plain(lines[-1]).replace("≈", "=")
    pieces = [p for p in re.split(r"\s+(?:or|and)\s+|,\s*(?=[A-Za-z_]\w*\s*=)", line) if "=" in p]
    if len(pieces) > 1:  # "x = 2 or x = 3"
        return ", ".join(_cut_sentence(p.rsplit("=", 1)[1]) for p in pieces)
    return _cut_sentence(line.rsplit("=", 1)[1]) or None


def sample_answer_text(text: str | None) -> str | None:
    """The answer in a model reply that was asked for "only the final answer"."""
    if not text or not text.strip():
        return None
    value = extract_final_value(text)
    if value is not None and ("\\boxed" in text or _ANSWER_PHRASE.search(text)):
        return value
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    if len(lines) == 1 or "=" not in last:
        return last
    return value or last
