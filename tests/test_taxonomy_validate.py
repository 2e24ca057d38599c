"""Every class of taxonomy problem is reported as file:line with a fix (validate.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import Problem, ValidationError
from builder.taxonomy import load_taxonomy, validate_taxonomy


def write(root: Path, **files: str) -> Path:
    root.mkdir(exist_ok=True)
    for name, text in files.items():
        (root / f"{name}.yaml").write_text(text)
    return root


def problems_of(tmp_path: Path, **files: str) -> list[Problem]:
    return validate_taxonomy(write(tmp_path / "tax", **files))


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def where(p: Problem) -> tuple[str, int | None]:
    return Path(p.file).name, p.line


GOOD = "id: m\nname: M\nchildren:\n  - id: a\n    name: A\n  - id: b\n    name: B\n"


def test_valid_taxonomy_has_no_problems(tmp_path: Path) -> None:
    assert problems_of(tmp_path, m=GOOD) == []


def test_yaml_syntax_error(tmp_path: Path) -> None:
    p = only(problems_of(tmp_path, m="id: m\nname: M\nchildren:\n  - id: a\n    name: A: b\n"))
    assert where(p) == ("m.yaml", 5)
    assert "YAML syntax error" in p.message and "quote" in p.message


def test_unterminated_flow_list_points_at_its_start(tmp_path: Path) -> None:
    p = only(problems_of(tmp_path, m="id: m\nname: M\nprerequisites: [a, b\nlevel: x\n"))
    assert p.file is not None and "started on line 3" in p.message


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    p = only(problems_of(tmp_path, m="id: m\nname: M\ndescripton: typo\n"))
    assert where(p) == ("m.yaml", 3)
    assert "unknown key 'descripton'" in p.message
    assert "did you mean 'description'?" in (p.hint or "")


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("id: m\nname: M\nweight: heavy\n", 3, "weight of 'm' must be a number > 0"),
        ("id: m\nname: M\nweight: 0\n", 3, "must be a number > 0, got 0"),
        ("id: m\nname: M\nweight: true\n", 3, "must be a number > 0"),
        ("id: m\nname: 42\n", 2, "name of 'm' must be text"),
        ("id: 7\nname: M\n", 1, "id must be text"),
        ("id: m\nname: M\ndescription: [a]\n", 3, "description of 'm' must be text"),
        ("id: m\nname: M\nprerequisites: a\n", 3, "must be a list of ids"),
        ("id: m\nname: M\nprerequisites: [[a]]\n", 3, "must be an id"),
        ("id: m\nname: M\nchildren: {id: a}\n", 3, "children of 'm' must be a list of nodes"),
        ("id: m\nname: M\nchildren:\n  - just text\n", 4, "child of 'm' must be a mapping"),
        ("id: m\nname: M\nlevel: 3\n", 3, "level of 'm' must be a name"),
    ],
)
def test_wrong_types(tmp_path: Path, text: str, line: int, needle: str) -> None:
    p = only(problems_of(tmp_path, m=text))
    assert where(p) == ("m.yaml", line)
    assert needle in p.message


def test_missing_and_bad_ids(tmp_path: Path) -> None:
    ps = problems_of(
        tmp_path,
        m="id: m\nname: M\nchildren:\n  - name: Linear Algebra\n  - id: Bad Id\n    name: X\n",
    )
    assert [where(p) for p in ps] == [("m.yaml", 4), ("m.yaml", 5)]
    assert "no id" in ps[0].message and "linear-algebra" in (ps[0].hint or "")
    assert "not a slug" in ps[1].message and "'bad-id'" in (ps[1].hint or "")


def test_empty_and_missing_names(tmp_path: Path) -> None:
    ps = problems_of(tmp_path, m="id: m\nname: '  '\nchildren:\n  - id: a\n")
    assert [where(p) for p in ps] == [("m.yaml", 2), ("m.yaml", 4)]
    assert "name of 'm' is empty" in ps[0].message
    assert "'a' has no name" in ps[1].message


def test_bad_status(tmp_path: Path) -> None:
    p = only(problems_of(tmp_path, m="id: m\nname: M\nstatus: aproved\n"))
    assert where(p) == ("m.yaml", 3)
    assert "status 'aproved'" in p.message and "'approved'" in (p.hint or "")


def test_duplicate_ids_across_files(tmp_path: Path) -> None:
    p = only(problems_of(tmp_path, m=GOOD, n="id: n\nname: N\nchildren:\n  - {id: a, name: A2}\n"))
    assert where(p) == ("n.yaml", 4)
    assert "duplicate id 'a'" in p.message and "m.yaml:4" in p.message
    assert p.hint == "ids must be unique; rename one of them"


def test_duplicate_key(tmp_path: Path) -> None:
    p = only(problems_of(tmp_path, m="id: m\nname: M\nname: N\n"))
    assert where(p) == ("m.yaml", 3)
    assert "duplicate key 'name'" in p.message


def test_dangling_prerequisite(tmp_path: Path) -> None:
    p = only(
        problems_of(
            tmp_path,
            m="id: m\nname: M\nchildren:\n  - {id: limits, name: A}\n"
            "  - id: b\n    name: B\n    prerequisites:\n      - limit\n",
        )
    )
    assert where(p) == ("m.yaml", 8)  # the line of the list item
    assert "prerequisite 'limit' of 'b' is not a node" in p.message
    assert "add it or remove it from prerequisites" in (p.hint or "")
    assert "did you mean 'limits'?" in (p.hint or "")


def test_prerequisite_cycle_is_printed(tmp_path: Path) -> None:
    ps = problems_of(
        tmp_path,
        m="id: m\nname: M\nchildren:\n"
        "  - {id: a, name: A, prerequisites: [c]}\n"
        "  - {id: b, name: B, prerequisites: [a]}\n",
        n="id: n\nname: N\nchildren:\n  - {id: c, name: C, prerequisites: [b]}\n",
    )
    p = only(ps)
    assert p.message == "prerequisite cycle: a -> b -> c -> a"
    assert where(p) == ("m.yaml", 5)  # where the first prerequisite of the cycle is declared
    assert "remove one of these prerequisites" in (p.hint or "")
    with pytest.raises(ValidationError) as info:
        load_taxonomy(tmp_path / "tax")
    assert "a -> b -> c -> a" in str(info.value)


def test_cycle_through_the_tree(tmp_path: Path) -> None:
    # x (inside a) is needed by b, and a needs b: a -> x -> b -> a.
    p = only(
        problems_of(
            tmp_path,
            m="id: m\nname: M\nchildren:\n"
            "  - id: a\n    name: A\n    prerequisites: [b]\n"
            "    children:\n      - {id: x, name: X}\n"
            "  - {id: b, name: B, prerequisites: [x]}\n",
        )
    )
    assert p.message == "prerequisite cycle: a -> x -> b -> a"


def test_self_ancestor_and_descendant_prerequisites(tmp_path: Path) -> None:
    ps = problems_of(
        tmp_path,
        m="id: m\nname: M\nprerequisites: [x]\nchildren:\n"
        "  - id: a\n    name: A\n    prerequisites: [a, m]\n    children:\n"
        "      - {id: x, name: X}\n",
    )
    messages = {(where(p), p.message) for p in ps}
    assert messages == {
        (
            ("m.yaml", 3),
            "'m' lists its own descendant 'x' as a prerequisite "
            "(a node cannot require part of itself)",
        ),
        (("m.yaml", 7), "'a' lists itself as a prerequisite"),
        (
            ("m.yaml", 7),
            "'a' lists its own ancestor 'm' as a prerequisite "
            "(it is part of 'm', so it cannot come after it)",
        ),
    }
    assert all(p.hint == "remove it from prerequisites" for p in ps)


def test_duplicate_prerequisite(tmp_path: Path) -> None:
    p = only(
        problems_of(
            tmp_path,
            m="id: m\nname: M\nchildren:\n  - {id: a, name: A}\n"
            "  - {id: b, name: B, prerequisites: [a, a]}\n",
        )
    )
    assert "listed twice" in p.message and where(p) == ("m.yaml", 5)


@pytest.mark.parametrize(
    ("text", "needle", "line"),
    [
        ("", "file is empty", 1),
        ("# only a comment\n", "file is empty", 1),
        ("- id: a\n  name: A\n", "must be one mapping", 1),
        ("id: a\nname: A\n---\nid: b\nname: B\n", "more than one YAML document", 3),
        ("id: a\nname: !!python/object x\n", "unsupported YAML tag", 2),
    ],
)
def test_file_level_problems(tmp_path: Path, text: str, needle: str, line: int) -> None:
    p = only(problems_of(tmp_path, m=text))
    assert needle in p.message and where(p) == ("m.yaml", line)


def test_all_problems_at_once_sorted_by_file_and_line(tmp_path: Path) -> None:
    ps = problems_of(
        tmp_path,
        a="id: a\nname: A\nstatus: nope\nchildren:\n  - {id: b, name: ''}\n",
        c="id: c\nname: C\nprerequisites: [zzz]\nwieght: 2\n",
        d="id: d\n name: bad indent\n",
    )
    assert [where(p) for p in ps] == [
        ("a.yaml", 3),
        ("a.yaml", 5),
        ("c.yaml", 3),
        ("c.yaml", 4),
        ("d.yaml", 2),
    ]
    # A file that cannot be read may hold the missing id: the hint says so.
    assert "d.yaml" in (ps[2].hint or "")
    with pytest.raises(ValidationError) as info:
        load_taxonomy(tmp_path / "tax")
    text = str(info.value)
    assert text.count("\n") == 4 and "a.yaml:3: status 'nope'" in text


def test_not_utf8(tmp_path: Path) -> None:
    root = write(tmp_path / "tax", m=GOOD)
    (root / "bad.yaml").write_bytes(b"id: x\nname: \xff\xfe\n")
    p = only(validate_taxonomy(root))
    assert where(p) == ("bad.yaml", 1) and "not UTF-8" in p.message
