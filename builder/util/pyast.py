"""Parsing Python source to an AST from several threads at once.

CPython 3.11 keeps the AST constructor's recursion-depth bookkeeping where two threads
converting trees at the same moment can trip over each other: ``ast.parse`` then fails with
``SystemError: AST constructor recursion depth mismatch`` (python/cpython#106905). The code
checks parse exercise code on thread pools, so every parse goes through one lock here (a
parse takes microseconds to a few milliseconds; compiling to bytecode is not affected).
"""

from __future__ import annotations

import ast
import threading

_LOCK = threading.Lock()


def parse(source: str, filename: str = "<unknown>") -> ast.Module:
    """``ast.parse(source, filename)`` (no inherited future flags), one thread at a time;
    raises what ``compile`` raises (``SyntaxError``, ``ValueError`` for null bytes...)."""
    with _LOCK:
        return compile(source, filename, "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
