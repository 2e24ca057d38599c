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


def test_prerequisite_cycle_names_every_edge_with_its_line(tmp_path: Path) -> None:
    ps = problems_of(
        tmp_path,
        m="id: m\nname: M\nchildren:\n"
        "  - {id: a, name: A, prerequisites: [c]}\n"
        "  - {id: b, name: B, prerequisites: [a]}\n",
        n="id: n\nname: N\nchildren:\n  - {id: c, name: C, prerequisites: [b]}\n",
    )
    p = only(ps)
    assert p.message.startswith("prerequisite cycle: a -> b -> c -> a: ")
    root = tmp_path / "tax"
    for edge in (
        f"'b' requires 'a' ({root / 'm.yaml'}:5)",
        f"'c' requires 'b' ({root / 'n.yaml'}:4)",
        f"'a' requires 'c' ({root / 'm.yaml'}:4)",
    ):
        assert edge in p.message, p.message
    assert where(p) == ("m.yaml", 4)  # the first edge of the cycle in file order
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
    assert "'x' is part of 'a'" in p.message
    assert "'b' requires 'x' (" in p.message and "'a' requires 'b' (" in p.message


def test_a_topic_that_needs_what_needs_its_own_subject_is_a_cycle(tmp_path: Path) -> None:
    # b requires all of a (a's whole subtree), but a1, part of a, requires b1, part of b:
    # a cannot be finished before b starts. The plain graph has no cycle; the curriculum has.
    p = only(
        problems_of(
            tmp_path,
            d="id: d\nname: D\nchildren:\n"
            "  - id: a\n    name: A\n    children:\n"
            "      - {id: a1, name: A1, prerequisites: [b1]}\n"
            "  - id: b\n    name: B\n    prerequisites: [a]\n    children:\n"
            "      - {id: b1, name: B1}\n",
        )
    )
    assert p.message.startswith("prerequisite cycle: ")
    assert "'a1' requires 'b1' (" in p.message and "d.yaml:7)" in p.message
    assert "'b' requires 'a' (" in p.message and "d.yaml:10)" in p.message
    assert "'a1' is part of 'a'" in p.message and "'b1' is part of 'b'" in p.message


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


def test_all_problems_at_once_syntax_errors_first(tmp_path: Path) -> None:
    ps = problems_of(
        tmp_path,
        a="id: a\nname: A\nstatus: nope\nchildren:\n  - {id: b, name: ''}\n",
        c="id: c\nname: C\nprerequisites: [zzz]\nwieght: 2\n",
        d="id: d\n name: bad indent\n",
    )
    assert [where(p) for p in ps] == [
        ("d.yaml", 2),  # the syntax error first: it may cause the others
        ("a.yaml", 3),
        ("a.yaml", 5),
        ("c.yaml", 3),
        ("c.yaml", 4),
    ]
    # A file that cannot be read may hold the missing id: the message says so.
    assert "d.yaml could not be read" in ps[3].message
    with pytest.raises(ValidationError) as info:
        load_taxonomy(tmp_path / "tax")
    text = str(info.value)
    assert text.count("\n") == 4 and "a.yaml:3: status 'nope'" in text
    assert text.splitlines()[0].startswith(f"{tmp_path / 'tax' / 'd.yaml'}:2: YAML syntax error")


def test_one_syntax_error_is_not_buried_under_its_consequences(tmp_path: Path) -> None:
    # A ': ' in an unquoted value makes mathematics.yaml unreadable; 28 prerequisites that
    # name its ids are one line after the real cause, not 28 lines before it.
    dependents = "".join(
        f"  - {{id: t{i}, name: T{i}, prerequisites: [arithmetic]}}\n" for i in range(28)
    )
    ps = problems_of(
        tmp_path,
        aaa="id: aaa\nname: A\nchildren:\n" + dependents,
        mathematics="id: mathematics\nname: M\nchildren:\n"
        "  - id: arithmetic\n    name: Arithmetic: the basics\n",
    )
    assert len(ps) == 2, [str(p) for p in ps]
    assert where(ps[0]) == ("mathematics.yaml", 5) and "YAML syntax error" in ps[0].message
    assert "28 prerequisite(s) could not be checked" in ps[1].message
    assert "mathematics.yaml could not be read" in ps[1].message
    assert "fix the YAML syntax error" in (ps[1].hint or "")


def test_a_tab_gets_a_fix_hint(tmp_path: Path) -> None:
    p = only(problems_of(tmp_path, m="id: m\nname: M\nchildren:\n  - id: a\n\t  name: A\n"))
    assert where(p) == ("m.yaml", 5)
    assert "indent with spaces, not tabs" in p.message


@pytest.mark.parametrize(
    ("level", "fix"), [("subjet", "subject"), ("topik", "topic"), ("Subject", "subject")]
)
def test_a_level_typo_is_an_error_with_a_did_you_mean(tmp_path: Path, level: str, fix: str) -> None:
    text = (
        "id: m\nname: M\nlevel: discipline\nchildren:\n"
        f"  - id: a\n    name: A\n    level: {level}\n"
        "    children: [{id: a1, name: A1, level: topic}]\n"
        "  - {id: b, name: B, level: subject}\n"
    )
    if level == "topik":
        text = text.replace("level: topic}", "level: topik}").replace(
            "level: topik", "level: subject", 1
        )
    p = only(problems_of(tmp_path, m=text))
    assert f"unknown level {level!r}" in p.message
    assert f"did you mean {fix!r}?" in (p.hint or "")
    assert where(p)[1] == (8 if level == "topik" else 7)


def test_custom_level_names_are_accepted(tmp_path: Path) -> None:
    text = (
        "id: m\nname: M\nlevel: domain\nchildren:\n"
        "  - {id: f, name: F, level: field, children: [{id: s, name: S, level: subfield}]}\n"
    )
    assert problems_of(tmp_path, m=text) == []
    # Configured names are always known, even when close to a default one.
    root = write(tmp_path / "t2", m=text.replace("level: field", "level: subjects"))
    assert validate_taxonomy(root, levels=["domain", "subjects", "subfield"]) == []
    assert "unknown level 'subjects'" in str(validate_taxonomy(root)[0])


def test_a_level_that_does_not_fit_its_depth_is_a_warning(tmp_path: Path) -> None:
    root = write(
        tmp_path / "tax",
        m="id: m\nname: M\nlevel: discipline\nchildren:\n"
        "  - id: a\n    name: A\n    level: subject\n    children:\n"
        "      - {id: a1, name: A1, level: discipline}\n"
        "  - id: b\n    name: B\n    level: subject\n"
        "  - id: c\n    name: C\n    level: subject\n"
        "  - id: d\n    name: D\n    level: topic\n",
    )
    tax = load_taxonomy(root)  # loads: a warning is not an error
    got = {(w.line, w.message) for w in tax.warnings}
    assert (
        9,
        "level 'discipline' of 'a1' is also the level of its ancestor 'm': levels go one "
        "step down per depth",
    ) in got
    assert (18, "level 'topic' of 'd' differs from its siblings' level 'subject'") in got
    assert len(got) == 2


def test_ids_are_words_joined_by_hyphens(tmp_path: Path) -> None:
    p = only(problems_of(tmp_path, m="id: m\nname: M\nchildren:\n  - {id: math_20-35, name: A}\n"))
    assert "'math_20-35' is not a slug" in p.message and "use 'math-20-35'" in (p.hint or "")


def test_did_you_mean_never_proposes_the_node_itself(tmp_path: Path) -> None:
    p = only(
        problems_of(
            tmp_path,
            m="id: m\nname: M\nchildren:\n"
            "  - {id: calculus-series, name: S, prerequisites: [calculus-seris]}\n",
        )
    )
    assert "is not a node" in p.message and "did you mean" not in (p.hint or "")


def test_load_one_file_resolves_prerequisites_in_the_files_beside_it(project_root: Path) -> None:
    physics = project_root / "tests" / "data" / "taxonomy_small" / "physics.yaml"
    tax = load_taxonomy(physics)
    assert [n.id for n in tax.roots()] == ["physics"]
    assert tax["mechanics"].prerequisites == ()
    assert tax.external_prerequisites == {"mechanics": ("calculus",), "dynamics": ("derivatives",)}
    assert tax["dynamics"].prerequisites == ("kinematics",)
    # Every shipped discipline file loads on its own.
    for f in sorted((project_root / "taxonomy").glob("*.yaml")):
        assert load_taxonomy(f).roots()[0].file == f


def test_not_utf8(tmp_path: Path) -> None:
    root = write(tmp_path / "tax", m=GOOD)
    (root / "bad.yaml").write_bytes(b"id: x\nname: \xff\xfe\n")
    p = only(validate_taxonomy(root))
    assert where(p) == ("bad.yaml", 1) and "not UTF-8" in p.message
