"""Rows whose keys repeat, found in bounded memory (``builder.dedup.keygroups``)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from builder.dedup import keygroups
from builder.dedup.keygroups import EqualKeys


def _reference(keys: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """The groups (tuples of rows) of keys met more than once, by a dict."""
    by_key: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for row, key in enumerate(keys):
        by_key[key].append(row)
    return sorted(tuple(rows) for rows in by_key.values() if len(rows) > 1)


def _as_groups(rows: np.ndarray, group: np.ndarray) -> list[tuple[int, ...]]:
    by_group: dict[int, list[int]] = defaultdict(list)
    for row, g in zip(rows.tolist(), group.tolist(), strict=True):
        by_group[g].append(row)
    return sorted(tuple(r) for r in by_group.values())


@st.composite
def _keys(draw):
    width = draw(st.sampled_from([1, 2]))
    pool = draw(
        st.lists(
            st.tuples(*[st.integers(0, 2**64 - 1)] * width), min_size=1, max_size=40, unique=True
        )
    )
    keys = draw(st.lists(st.sampled_from(pool), max_size=300))
    batches = draw(st.lists(st.integers(1, 50), min_size=1, max_size=8))
    budget = draw(st.sampled_from([1, 2, 5, 17, 64, 10_000]))
    return width, keys, batches, budget


@hypothesis_settings(max_examples=200, deadline=None)
@given(_keys())
def test_groups_equal_a_dict_of_the_keys_for_any_budget_and_batches(tmp_path_factory, case):
    """Spilled or not, split again or not: the same rows, grouped the same, rows ascending;
    and no spill file is left."""
    width, keys, batches, budget = case
    spill = tmp_path_factory.mktemp("spill")
    found = EqualKeys(width, spill_dir=spill, budget_rows=budget)
    arr = np.array(keys, dtype=np.uint64).reshape(len(keys), width)
    at, k = 0, 0
    while at < len(arr):
        step = batches[k % len(batches)]
        found.add(arr[at : at + step] if width > 1 else arr[at : at + step, 0])
        at, k = at + step, k + 1
    rows, group = found.groups()
    assert rows.tolist() == sorted(rows.tolist())
    assert _as_groups(rows, group) == _reference([tuple(map(int, r)) for r in arr])
    assert list(spill.iterdir()) == []


def test_memory_holds_a_budget_of_keys_whatever_the_rows(tmp_path: Path) -> None:
    """Distinct keys (hashes): what is held at once stays within the budget plus one batch,
    and most keys went to disk; a group spread over every batch is still found."""
    rng = np.random.default_rng(7)
    keys = rng.integers(0, 2**63, size=(20_000, 2), dtype=np.uint64)
    keys[[5, 9_999, 19_998]] = keys[123]
    found = EqualKeys(2, spill_dir=tmp_path, budget_rows=1_000)
    for lo in range(0, len(keys), 250):
        found.add(keys[lo : lo + 250])
    rows, group = found.groups()
    assert rows.tolist() == [5, 123, 9_999, 19_998]
    assert len(set(group.tolist())) == 1
    assert found.largest_held <= 1_000 + 250
    assert found.spilled >= 19_000
    assert list(tmp_path.iterdir()) == []


def test_one_key_for_every_row_ends_in_one_group(tmp_path: Path) -> None:
    """Keys no bits can split (all equal) are grouped once the split stops dividing them."""
    found = EqualKeys(1, spill_dir=tmp_path, budget_rows=3)
    found.add(np.full(100, 9, dtype=np.uint64))
    rows, group = found.groups()
    assert rows.tolist() == list(range(100))
    assert set(group.tolist()) == {0}


def test_keys_of_the_wrong_width_are_refused() -> None:
    with pytest.raises(ValueError, match="3 words, not 2"):
        EqualKeys(2).add(np.zeros((4, 3), dtype=np.uint64))


def test_dedup_finds_the_same_exact_groups_when_its_keys_spill(tmp_path: Path, monkeypatch):
    """Dedup's exact groups come from the pieces' files through ``EqualKeys``; with a budget
    of a few keys (spilled, split again) the kept rows and clusters equal the in-memory
    ones."""
    from builder.dedup import dedup_files
    from builder.settings.dedup import DedupSettings

    texts = [f"document number {i % 37} about topic {i % 37} " * 3 for i in range(400)]
    frame = pl.DataFrame({"id": [f"d{i:04d}" for i in range(400)], "text": texts})
    frame.write_parquet(tmp_path / "in.parquet")
    settings = DedupSettings(partition_size=50, workers=1)
    want = dedup_files(tmp_path / "in.parquet", tmp_path / "whole", settings)

    spills: list[int] = []
    real = keygroups._append_split

    def counted(records, folder, *, level):
        if records.shape[1] == 3:  # exact keys (two words) and their rows, not id hashes
            spills.append(len(records))
        real(records, folder, level=level)

    monkeypatch.setattr(keygroups, "KEY_ROWS", 8)
    monkeypatch.setattr(keygroups, "_append_split", counted)
    got = dedup_files(tmp_path / "in.parquet", tmp_path / "spilled", settings)
    assert sum(spills) >= 400  # every exact key went through the spill files
    assert got.stats.exact_removed == want.stats.exact_removed == 400 - 37
    assert got.clusters.equals(want.clusters)
    kept = [pl.read_parquet(p / "kept.parquet") for p in (tmp_path / "whole", tmp_path / "spilled")]
    assert kept[0].equals(kept[1])
