"""builder.util.files: the one atomic writer (temp file, fsync, rename)."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.util.files import atomic_write, atomic_write_bytes, atomic_write_text


def test_temp_file_is_hidden_and_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "part-00000.parquet"
    atomic_write_bytes(target, b"old")
    seen: list[Path] = []

    def failing(tmp: Path) -> None:
        seen.append(tmp)
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, failing)
    (tmp,) = seen
    assert tmp.parent == target.parent and tmp.name.startswith(".part-00000.parquet.")
    assert tmp.name.endswith(".tmp")  # a reader globbing part-*.parquet never sees it
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00000.parquet"]


def test_text_writes_replace_and_keep_permissions(tmp_path: Path) -> None:
    target = tmp_path / "a" / "card.md"
    atomic_write_text(target, "one")
    target.chmod(0o640)
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert target.stat().st_mode & 0o777 == 0o640
