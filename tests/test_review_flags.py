"""The curator flag log (builder.review.flags): append, replay, torn lines, and what assembly
does with it."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from builder.errors import InputError
from builder.review.flags import (
    FLAGS_NAME,
    append_flags,
    drop_flagged,
    flagged_ids,
    flags_fingerprint,
    load_flags,
)


def test_flags_replay_in_order(tmp_path: Path) -> None:
    assert load_flags(tmp_path) == {} and flagged_ids(tmp_path) == set()
    assert append_flags(tmp_path, ["a1", "b2", "a1"], "flag", "  off\ntopic ") == 2
    flags = load_flags(tmp_path)
    assert set(flags) == {"a1", "b2"} and flags["a1"].reason == "off topic"
    assert append_flags(tmp_path, ["a1"], "unflag") == 1
    assert flagged_ids(tmp_path) == {"b2"}
    append_flags(tmp_path, ["a1"], "flag", "second thoughts")
    assert load_flags(tmp_path)["a1"].reason == "second thoughts"
    events = [json.loads(x) for x in (tmp_path / FLAGS_NAME).read_text().splitlines()]
    assert [e["action"] for e in events] == ["flag", "flag", "unflag", "flag"]


def test_a_torn_last_line_is_ignored_and_the_next_event_starts_a_line(tmp_path: Path) -> None:
    append_flags(tmp_path, ["a1"], "flag", "x")
    with (tmp_path / FLAGS_NAME).open("a") as fh:
        fh.write('{"id": "b2", "action": "fl')  # a writer killed mid-line
    assert flagged_ids(tmp_path) == {"a1"}
    append_flags(tmp_path, ["c3"], "flag", "y")
    with pytest.raises(InputError, match="unreadable flag event") as exc:
        load_flags(tmp_path)  # the torn line is now in the middle: an error naming it
    assert exc.value.problem.line == 2


def test_bad_ids_and_actions_are_refused(tmp_path: Path) -> None:
    for bad in ["../etc", "a b", "", "x/y"]:
        with pytest.raises(ValueError, match="not a document id"):
            append_flags(tmp_path, [bad], "flag")
    with pytest.raises(ValueError, match="action"):
        append_flags(tmp_path, ["a1"], "delete")
    assert not (tmp_path / FLAGS_NAME).exists()


def test_fingerprint_follows_the_current_flags(tmp_path: Path) -> None:
    empty = flags_fingerprint(tmp_path)
    append_flags(tmp_path, ["a1"], "flag", "x")
    flagged = flags_fingerprint(tmp_path)
    assert flagged != empty
    append_flags(tmp_path, ["a1"], "unflag")
    assert flags_fingerprint(tmp_path) == empty


def test_drop_flagged_moves_rows_to_rejected(tmp_path: Path) -> None:
    docs = pl.LazyFrame({"id": ["a1", "b2", "c3"], "text": ["A", "B", "C"], "n_tokens": [1, 2, 3]})
    rejected = pl.LazyFrame(
        {"id": ["z9"], "stage": ["filter"], "reason": ["short"], "detail": [None]},
        schema={"id": pl.String, "stage": pl.String, "reason": pl.String, "detail": pl.String},
    )
    same_docs, same_rej = drop_flagged(docs, rejected, tmp_path)
    assert same_docs is docs and same_rej is rejected  # nothing flagged: untouched
    append_flags(tmp_path, ["b2", "not-in-run"], "flag", "wrong")
    kept, rej = drop_flagged(docs, rejected, tmp_path)
    assert sorted(kept.collect()["id"]) == ["a1", "c3"]
    rows = {r["id"]: r for r in rej.collect().to_dicts()}
    assert set(rows) == {"z9", "b2"}
    assert rows["b2"]["stage"] == "review" and rows["b2"]["reason"] == "curator"
    assert rows["b2"]["detail"] == "wrong" and rows["b2"]["text"] == "B"
