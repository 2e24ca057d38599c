"""Check a code exercise: run its reference solution against its tests in the sandbox."""

from __future__ import annotations

import ast
from typing import Any

from builder.settings.filters import VerifySettings
from builder.util.pyast import parse
from builder.verify.sandbox import run_in_sandbox
from builder.verify.verdict import Verdict, failed, passed

CHECKER = "sandbox"
MAX_SOURCE_CHARS = 200_000


def _strip_fences(code: str) -> str:
    """Remove a Markdown code fence around the whole text, which models like to add."""
    text = code.strip()
    if text.startswith("```"):
        lines = text.splitlines()
        lines = lines[1:]
        if lines and lines[-1].strip().startswith("```"):
            lines = lines[:-1]
        return "\n".join(lines)
    return code


def _source(value: Any) -> str:
    """Code as text; a list of snippets (e.g. one assert per item) is joined by lines."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return "\n".join(_strip_fences(str(v)) for v in value)
    return str(value)


def _syntax_problem(source: str, name: str) -> str | None:
    try:
        parse(source, name)
    except SyntaxError as exc:
        return f"{name}:{exc.lineno}: {exc.msg}"
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
        return f"{name}: {type(exc).__name__}: {exc}"
    return None


def has_tests(tests: str) -> bool:
    """Whether the test code checks anything: an assert, a test function/class, or assert*()."""
    try:
        tree = ast.parse(tests)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return True  # let the syntax check report it
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert):
            return True
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
            "test"
        ):
            return True
        if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            return True
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name.startswith("assert") or name in ("raises", "fail"):
                return True
    return False


def verify_code(structured: dict[str, Any], settings: VerifySettings) -> Verdict:
    """Run ``structured["solution"]`` then ``structured["tests"]`` and turn the end into a verdict.

    Syntax errors and missing tests are found without starting a process.
    """
    solution = _strip_fences(_source(structured.get("solution")))
    tests = _strip_fences(_source(structured.get("tests")))
    if not solution.strip():
        return failed("no_solution", "the exercise has no reference solution", CHECKER)
    if not tests.strip():
        return failed("no_tests", "the exercise has no tests", CHECKER)
    if len(solution) + len(tests) > MAX_SOURCE_CHARS:
        return failed(
            "crashed", f"solution and tests exceed {MAX_SOURCE_CHARS} characters", CHECKER
        )
    for source, name in ((solution, "solution.py"), (tests, "test_solution.py")):
        problem = _syntax_problem(source, name)
        if problem:
            return failed("syntax_error", problem, CHECKER)
    if not has_tests(tests):
        return failed("no_tests", "the tests contain no assert and no test function", CHECKER)
    result = run_in_sandbox(solution, tests, settings)
    if result.status == "passed":
        return passed(CHECKER, f"{result.passed} tests passed in {result.elapsed_s:.2f} s")
    return failed(result.status, result.detail, CHECKER)
