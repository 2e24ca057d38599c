"""The cheaper code behind the generate stage gives exactly what the plain code it replaced
gave: rendered text tidying, unit dicts, canonical JSON and row tables (property tests
against the plain implementations, written out here)."""

from __future__ import annotations

import dataclasses
import io
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import example, given, settings
from hypothesis import strategies as st

from builder.records import GENERATED_SCHEMA, Unit, canonical_json, encode_row, to_table
from builder.templates.model import _tidy


def plain_tidy(text: str) -> str:
    lines = [line.rstrip() for line in text.strip().splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


# Text made of the characters that matter to tidying: every kind of line break and
# whitespace str.splitlines / str.rstrip know, ASCII and not, plus ordinary letters.
ASCII_TRICKY = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1fab"
TRICKY = ASCII_TRICKY + "\x85\xa0\u2028\u2029\u3000"


@settings(max_examples=500, deadline=None)
@given(
    st.text(alphabet=ASCII_TRICKY, max_size=40)
    | st.text(alphabet=TRICKY, max_size=40)
    | st.text(max_size=40)
)
@example("a\x1f\nb")
@example("a \nb")
@example("a\t\n\n\n\nb")
@example("a\x1cb\x0bc\rd\r\ne\x0cf\x1dg\x1eh")
@example("a\n\n\n\n\n\n\n\n\nb\n\n\nc\n\nd")
def test_tidy_equals_the_plain_line_by_line_version(text: str) -> None:
    assert _tidy(text) == plain_tidy(text)


def test_tidy_on_rendered_shapes() -> None:
    body = "\n" * 15 + "Write about x.\n\n\n\n\nTeach:\n1. a  \n2. b\t\n\n\n" + "\n" * 7 + "End."
    assert _tidy(body) == plain_tidy(body) == "Write about x.\n\nTeach:\n1. a\n2. b\n\nEnd."


units = st.builds(
    Unit,
    unit_id=st.text(max_size=8),
    discipline=st.text(max_size=8),
    subject=st.text(max_size=8),
    topic=st.text(max_size=8),
    taxonomy_path=st.text(max_size=8),
    discipline_name=st.text(max_size=8),
    subject_name=st.text(max_size=8),
    topic_name=st.text(max_size=8),
    concepts=st.lists(st.text(max_size=5), max_size=4).map(tuple),
    session=st.none() | st.text(max_size=8),
    session_index=st.none() | st.integers(0, 9),
    difficulty=st.sampled_from(["introductory", "intermediate", "advanced"]),
    level=st.none() | st.text(max_size=8),
    description=st.none() | st.text(max_size=8),
    seed=st.integers(0, 2**31),
)


@settings(max_examples=100, deadline=None)
@given(units)
def test_unit_to_dict_equals_asdict_with_concepts_as_a_list(unit: Unit) -> None:
    plain = dataclasses.asdict(unit)
    plain["concepts"] = list(unit.concepts)
    d = unit.to_dict()
    assert d == plain and list(d) == list(plain)
    assert Unit.from_dict(d) == unit


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_canonical_json_equals_json_dumps_with_its_options(value) -> None:
    plain = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    assert canonical_json(value) == plain


def _row(i: int) -> dict:
    return {
        "id": f"d{i}",
        "text": "é" * (i % 5) + f" text {i}",
        "kind": "exercise" if i % 2 else "section",
        "concepts": [f"c{i}", "x"] if i % 3 else [],
        "seed": i,
        "prompt_tokens": None if i % 4 == 0 else i,
        "cached": bool(i % 2),
        "cost": 0.5 * i,
        "structured": {"problem": f"p{i}", "answer": [1, 2.5]} if i % 2 else None,
        "status": "ok",
        "not_a_column": 1,
    }


def test_to_table_equals_table_from_pylist_and_writes_the_same_bytes() -> None:
    rows = [_row(i) for i in range(50)]
    names = GENERATED_SCHEMA.names
    plain = pa.Table.from_pylist(
        [{c: r.get(c) for c in names} for r in map(encode_row, rows)], schema=GENERATED_SCHEMA
    )
    table = to_table(rows, GENERATED_SCHEMA)
    assert table.equals(plain) and table.schema == GENERATED_SCHEMA

    def parquet(t: pa.Table) -> bytes:
        out = io.BytesIO()
        pq.write_table(t, out, compression="zstd")
        return out.getvalue()

    assert parquet(table) == parquet(plain)
    assert to_table([], GENERATED_SCHEMA).equals(GENERATED_SCHEMA.empty_table())
