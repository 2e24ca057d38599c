"""``builder.util.pyast.parse``: the AST ``ast.parse`` gives, from many threads at once."""

from __future__ import annotations

import ast
from concurrent.futures import ThreadPoolExecutor

import pytest

from builder.util.pyast import parse

SOURCE = "x = " + "(" * 40 + "1" + ")" * 40 + "\n" + "def f(a):\n    return [a for a in a]\n"


def test_parse_from_many_threads_gives_ast_parse_trees() -> None:
    want = ast.dump(ast.parse(SOURCE))
    with ThreadPoolExecutor(8) as pool:
        got = set(pool.map(lambda _: ast.dump(parse(SOURCE, "<t>")), range(64)))
    assert got == {want}


def test_parse_raises_what_compile_raises() -> None:
    with pytest.raises(SyntaxError) as exc:
        parse("def f(:\n", "solution.py")
    assert exc.value.filename == "solution.py" and exc.value.lineno == 1
    with pytest.raises((SyntaxError, ValueError), match="null bytes"):
        parse("x = 1\0")
