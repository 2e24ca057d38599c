"""Answer text before sympy sees it: LaTeX, unicode and unit normalisation, and finding the
final value in a worked solution. Pure string work; ``builder.verify.answers`` parses the result.
"""

from __future__ import annotations

import re
from typing import Any

import sympy

FUNCS = {
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
CONSTANTS = {"pi": sympy.pi, "e": sympy.E, "E": sympy.E, "oo": sympy.oo, "inf": sympy.oo}


class AnswerParseError(ValueError):
    """The text is not an answer this module can read (or is unsafe to evaluate)."""


GREEK = (
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
    for name in GREEK:
        s = re.sub(r"\\" + name + r"(?![A-Za-z])", f" {name} ", s)
    s = s.replace("{", "(").replace("}", ")")
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # thousands separators: 1,234,567
    return " ".join(s.split())


def unwrap(text: str) -> str:
    """Drop \\boxed{}, "Answer:", LaTeX and the final full stop around an answer."""
    s = text.strip()
    boxed = _last_command_arg(s, r"\boxed") or _last_command_arg(s, r"\fbox")
    if boxed is not None:
        s = boxed
    s = re.sub(r"^\s*(?:final\s+answer|answer|ans)\s*[:=]?\s*", "", s, flags=re.IGNORECASE)
    s = latex_to_plain(s)
    return s.strip().rstrip(".").strip()


def rhs(s: str) -> str:
    """ "x = 5" and "v = 2 * 3 = 6" -> the last right-hand side."""
    if "=" in s:
        s = s.rsplit("=", 1)[1]
    return s.strip().rstrip(".").strip()


def strip_units(s: str) -> list[tuple[str, bool]]:
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
        if token in FUNCS or token in CONSTANTS or token in GREEK:
            return [(s, False)]  # "5 pi" is a value, not a unit
    spaced = tail[:1].isspace()
    known = word in _SI_UNITS or word.split("/")[0].split("^")[0] in _SI_UNITS
    if not (spaced or known or len(word) > 1):
        return [(s, False)]  # "5x": a symbolic answer, not a unit
    num = m.group("num")
    percent = "%" in word or "percent" in word.lower()
    return [(num, percent)]


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
