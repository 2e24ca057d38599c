"""The line-keeping YAML reader gives the same result with every parser it can use
(builder.taxonomy.parse)."""

from __future__ import annotations

from pathlib import Path

import pytest

import builder.taxonomy.parse as parse
from builder.taxonomy import load_taxonomy

DATA = Path(__file__).parent / "data" / "taxonomy_small"

DOC = """\
# comment
id: m
name: "M: quoted"
weight: 2.5
flags: [yes, no, on, true, ~, 0x1F, 1_0, .inf]
text: |
  block
  scalar
anchor: &a {x: 1}
alias: *a
items:
  - {id: a, name: A}
  - id: b
    name: B
"""


@pytest.fixture(params=["clib", "pyyaml", "pure"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param in ("pyyaml", "pure"):
        monkeypatch.setattr(parse, "_CParser", None)
    if request.param == "pure":
        monkeypatch.setattr(parse, "_PYYAML", None)
    elif request.param == "pyyaml":
        assert parse._pyyaml_parser() is not None, "PyYAML with libyaml is missing: make test"
    elif request.param == "clib":
        assert parse._CParser is not None, "ruamel.yaml.clib is missing: make test"
    return request.param


def test_values_and_lines(implementation: str) -> None:
    data, problems = parse.parse_yaml(DOC)
    assert problems == []
    assert data["name"] == "M: quoted" and data["weight"] == 2.5
    assert data["flags"] == ["yes", "no", "on", True, None, 31, "1_0", float("inf")]
    assert data["text"] == "block\nscalar\n"
    assert data["alias"] == {"x": 1}
    assert data.line == 2
    assert data.key_lines["items"] == 11
    assert data["items"].item_lines == [12, 13]
    assert data["items"][1].line == 13 and data["items"][1].key_lines["name"] == 14


def test_syntax_errors_have_lines(implementation: str) -> None:
    with pytest.raises(parse.YamlSyntaxError) as info:
        parse.parse_yaml("id: a\nname: b: c\n")
    assert info.value.line == 2 and "quote" in info.value.message
    with pytest.raises(parse.YamlSyntaxError) as info:
        parse.parse_yaml("a: 1\n---\nb: 2\n")
    assert info.value.line == 2 and "more than one YAML document" in info.value.message


def test_duplicate_keys_are_reported(implementation: str) -> None:
    data, problems = parse.parse_yaml("a: 1\nb: 2\na: 3\n")
    assert data == {"a": 1, "b": 2}
    assert problems == [(3, "duplicate key 'a' (first on line 1)")]


def test_load_is_the_same_with_every_parser(implementation: str) -> None:
    tax = load_taxonomy(DATA)
    assert [(n.id, n.line, n.weight) for n in tax][:4] == [
        ("mathematics", 2, 1.0),
        ("algebra", 7, 1.0),
        ("equations", 11, 1.0),
        ("polynomials", 12, 2.0),
    ]


def test_parser_name() -> None:
    assert parse.fast_parser_name() in ("ruamel.yaml.clib", "pyyaml-libyaml", "pure-python")
