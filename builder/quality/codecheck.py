"""Code inside prose: Python fences of sections are syntax-checked, ``>>>`` examples are run.

A textbook section that shows broken code teaches the broken code. For each section:

* every fenced block labelled ``python``/``py``/``python3`` (without ``>>>`` prompts) must
  parse (``ast.parse``, no process started);
* interactive examples (``>>>`` / ``...`` lines in a ``python``, ``pycon`` or unlabelled
  fence) run in the verification sandbox (``builder.verify.sandbox``: no network, CPU,
  memory and output limits): the section's plain Python fences run first as the solution
  (so examples can use the functions they define), then each example in order, its printed
  value compared with the expected output the way doctest does (whitespace-normalised,
  ``...`` matches anything, a ``Traceback`` expects that exception).

``code_ok`` is True (all checked code is fine), False (detail says what failed) or None
(nothing to check: no Python fences, or not a section). Exercises are verified by
``builder.verify`` instead.
"""

from __future__ import annotations

import doctest
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from builder.settings.filters import VerifySettings
from builder.util.pyast import parse

REASON = "code_error"
_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*?)^[ \t]*```", re.S | re.M)
PYTHON_LABELS = frozenset({"python", "py", "python3"})
EXAMPLE_LABELS = PYTHON_LABELS | {"pycon", ""}
MAX_EXAMPLES = 50

# The test file run in the sandbox: the examples are a literal list, run in order in one
# namespace that starts with the solution's names (the runner copies them in).
_TESTS = """
import io as _io
import re as _re
import sys as _sys

_EXAMPLES = {examples!r}


def _norm(text):
    return " ".join(text.split())


def _matches(want, got):
    want, got = _norm(want), _norm(got)
    if "..." not in want:
        return want == got
    pattern = ".*".join(_re.escape(part) for part in want.split("..."))
    return _re.fullmatch(pattern, got, _re.S) is not None


def test_examples():
    namespace = {{k: v for k, v in globals().items() if not k.startswith("_")}}
    for n, (source, want, line) in enumerate(_EXAMPLES, 1):
        where = "example %d (line %d): >>> %s" % (n, line, source.strip().splitlines()[0])
        buffer = _io.StringIO()
        saved = _sys.stdout
        _sys.stdout = buffer
        try:
            exec(compile(source, "<example %d>" % n, "single"), namespace)
            raised = None
        except Exception as exc:
            raised = exc
        finally:
            _sys.stdout = saved
        if want.startswith("Traceback (most recent call last)"):
            name = want.strip().splitlines()[-1].split(":")[0].strip().rsplit(".", 1)[-1]
            assert raised is not None, where + " should raise " + name
            assert type(raised).__name__ == name, (
                where + " raised %s, expected %s" % (type(raised).__name__, name)
            )
            continue
        if raised is not None:
            raise AssertionError(where + " raised %s: %s" % (type(raised).__name__, raised))
        got = buffer.getvalue()
        assert _matches(want, got), where + " printed %r, expected %r" % (got[:200], want[:200])
"""


@dataclass(frozen=True)
class CodeCheck:
    """The verdict on one document's code: ``ok`` (None: nothing checked) and a detail."""

    ok: bool | None
    detail: str = ""
    fences: int = 0
    examples: int = 0


def fences(text: str) -> list[tuple[str, str]]:
    """(label, body) of every fenced code block, labels lowercased."""
    if not text or "```" not in text:  # most prose: one substring scan, not a regex per line
        return []
    return [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]


def _syntax_error(source: str, what: str) -> str | None:
    try:
        parse(source)
    except SyntaxError as exc:
        return f"{what}: line {exc.lineno}: {exc.msg}"
    except ValueError as exc:  # null bytes
        return f"{what}: {exc}"
    return None


def plan_checks(
    text: str, found: list[tuple[str, str]] | None = None
) -> tuple[list[str], list[tuple[str, str, int]], str | None]:
    """(plain Python fences, examples as (source, want, line), first syntax problem or None).

    Pure parsing; nothing runs. Example sources are compiled to find syntax errors early.
    ``found``: the text's ``fences`` when the caller has them already.
    """
    plain: list[str] = []
    examples: list[tuple[str, str, int]] = []
    parser = doctest.DocTestParser()
    for i, (label, body) in enumerate(fences(text) if found is None else found, 1):
        if ">>>" in body and label in EXAMPLE_LABELS:
            try:
                found = parser.get_examples(body)
            except ValueError as exc:
                return plain, examples, f"fence {i}: malformed example ({exc})"
            for ex in found:
                try:
                    compile(ex.source, "<example>", "single")
                except SyntaxError as exc:
                    return (
                        plain,
                        examples,
                        f"fence {i}: example >>> {ex.source.strip()[:60]}: {exc.msg}",
                    )
                examples.append((ex.source, ex.want, ex.lineno + 1))
        elif label in PYTHON_LABELS:
            problem = _syntax_error(body, f"fence {i}")
            if problem:
                return plain, examples, problem
            plain.append(body)
    return plain, examples, None


@dataclass(frozen=True)
class _Run:
    """A text whose examples must run in the sandbox (what ``_parsed`` could not decide)."""

    plain: list[str]
    examples: list[tuple[str, str, int]]
    n_fences: int


def _parsed(text: str, run: bool) -> CodeCheck | _Run:
    """The verdict when parsing decides it, else what to run."""
    found = fences(text)
    n_fences = len(found)
    if not found:
        return CodeCheck(None, "", 0, 0)
    plain, examples, problem = plan_checks(text, found)
    if problem:
        return CodeCheck(False, problem, n_fences, len(examples))
    if not plain and not examples:
        return CodeCheck(None, "", n_fences, 0)
    if not examples or not run:
        return CodeCheck(True, f"{len(plain)} fence(s) parse", n_fences, len(examples))
    return _Run(plain, examples, n_fences)


def check_code(text: str, settings: VerifySettings | None = None, *, run: bool = True) -> CodeCheck:
    """Check the Python in one text (see the module docstring); ``run=False`` parses only."""
    parsed = _parsed(text, run)
    return parsed if isinstance(parsed, CodeCheck) else _run(parsed, settings)


def _run(job: _Run, settings: VerifySettings | None) -> CodeCheck:
    """Run a text's examples (after its plain fences) in the sandbox."""
    from builder.verify.sandbox import run_in_sandbox

    plain, examples, n_fences = job.plain, job.examples, job.n_fences

    tests = _TESTS.format(examples=examples[:MAX_EXAMPLES])
    result = run_in_sandbox("\n\n".join(plain), tests, settings or VerifySettings())
    if result.status == "passed":
        return CodeCheck(True, f"{len(examples)} example(s) passed", n_fences, len(examples))
    detail = (result.detail or result.status).strip().splitlines()
    return CodeCheck(False, f"{result.status}: {' '.join(detail)[:300]}", n_fences, len(examples))


def check_documents(
    texts: Sequence[str],
    kinds: Iterable[str | None],
    settings: VerifySettings | None = None,
    *,
    workers: int = 2,
) -> list[CodeCheck]:
    """``check_code`` of every section (other kinds get ``CodeCheck(None)``): parsed here,
    and only the sections with examples to run go to the sandboxes, in parallel threads
    (each run is its own process)."""
    settings = settings or VerifySettings()
    checks: list[CodeCheck | _Run] = [
        _parsed(text, True) if kind == "section" else CodeCheck(None)
        for text, kind in zip(texts, kinds, strict=True)
    ]
    jobs = [i for i, check in enumerate(checks) if isinstance(check, _Run)]
    if jobs:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
            done = pool.map(lambda i: _run(checks[i], settings), jobs)  # type: ignore[arg-type]
            for i, check in zip(jobs, done, strict=True):
                checks[i] = check
    return checks  # type: ignore[return-value]
