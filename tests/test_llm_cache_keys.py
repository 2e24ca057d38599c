"""The LLM cache's key file: keys live in a second SQLite file of small pages, the rows in the
main file. A kill between the two files' commits, a lost key file, a key file of another
cache or an older main file, and a cache of the previous schema must all answer every stored
key with its own row, never with another request's, and never store a key twice."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from builder.errors import CacheError
from builder.llm.cache import (
    CACHE_FILE,
    KEYS_FILE,
    MIGRATIONS,
    PAGE_SIZE,
    SCHEMA_VERSION,
    Cache,
)
from tests.support.cache import cache_entry


def _texts(cache: Cache, keys: list[str]) -> dict[str, str | None]:
    return {k: hit.text for k, hit in cache.get_many(keys).items()}


def _all_found(cache: Cache, numbers: range | list[int]) -> bool:
    """Whether every entry ``cache_entry(i)`` of ``numbers`` is answered with its own text."""
    entries = [cache_entry(i) for i in numbers]
    return _texts(cache, [e.key for e in entries]) == {e.key: e.text for e in entries}


def _rows_only(directory, rows: list[tuple[int, str, str]]) -> None:
    """Rows (id, key, text) committed to the main file only, as a kill between the two files'
    commits leaves them (SQLite commits the main file first)."""
    with sqlite3.connect(directory / CACHE_FILE) as conn:
        conn.executemany(
            "INSERT INTO responses (id, key, created_at, base_url, model, status, text, "
            "request, response) VALUES (?, ?, 0, 'u', 'm', 'ok', ?, '{}', '[]')",
            rows,
        )


def _remove_keys_file(directory) -> None:
    for suffix in ("", "-wal", "-shm"):
        (directory / (KEYS_FILE + suffix)).unlink(missing_ok=True)


def test_keys_have_their_own_small_page_file_and_the_rows_no_key_index(tmp_path):
    cache = Cache(tmp_path)
    assert cache.put_many([cache_entry(i) for i in range(50)]) == 50
    # Stored again, with other texts: the first answer stays, nothing is added.
    assert cache.put_many([cache_entry(i, "later") for i in range(45, 55)]) == 5
    assert cache.count() == 55
    assert _texts(cache, ["k0047", "k0052"]) == {
        "k0047": cache_entry(47).text,
        "k0052": "later",
    }
    # The same key twice in one batch: the first one is stored.
    assert cache.put_many([cache_entry(60, "first"), cache_entry(60, "second")]) == 1
    assert cache.get("k0060").text == "first"
    assert cache.contains("k0060") and not cache.contains("k0061")
    assert cache.raw("k0003") == ({"n": 3}, [{"id": "r3"}])
    cache.close()
    with sqlite3.connect(tmp_path / CACHE_FILE) as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE
        indexes = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'responses'"
        ).fetchall()
        assert indexes == []
    with sqlite3.connect(tmp_path / KEYS_FILE) as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 4096
        assert conn.execute("SELECT count(*) FROM response_keys").fetchone()[0] == 56


def test_rows_committed_without_their_keys_are_found_and_never_stored_twice(tmp_path):
    cache = Cache(tmp_path)
    cache.put_many([cache_entry(i) for i in range(10)])
    # A kill between the two commits: the main file has rows 11-15, the key file not.
    _rows_only(
        tmp_path, [(11 + j, f"k{i:04d}", f"orphan {i}") for j, i in enumerate(range(10, 15))]
    )
    assert cache.get_many(["k0012"]) == {}  # not indexed yet
    # The next write indexes them first: the orphan (first writer) stays, one row is new.
    assert cache.put_many([cache_entry(12, "again"), cache_entry(20)]) == 1
    assert cache.count() == 16
    assert _texts(cache, ["k0012", "k0014", "k0020"]) == {
        "k0012": "orphan 12",
        "k0014": "orphan 14",
        "k0020": cache_entry(20).text,
    }
    cache.close()

    # Opening a cache indexes them too (before any write).
    _rows_only(tmp_path, [(17, "k0030", "x")])
    reopened = Cache(tmp_path)
    assert _texts(reopened, ["k0030"]) == {"k0030": "x"} and _all_found(reopened, range(10))
    reopened.close()


def test_a_lost_key_file_is_rebuilt_from_the_rows(tmp_path):
    cache = Cache(tmp_path)
    cache.put_many([cache_entry(i) for i in range(300)])
    cache.close()
    _remove_keys_file(tmp_path)
    rebuilt = Cache(tmp_path)
    assert _all_found(rebuilt, range(300))
    assert rebuilt.put_many([cache_entry(5, "again"), cache_entry(300)]) == 1
    rebuilt.close()


def test_a_key_file_of_another_cache_is_replaced(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    first = Cache(a)
    first.put_many([cache_entry(i) for i in range(10)])
    first.close()
    second = Cache(b)
    second.put_many([cache_entry(i) for i in range(100, 110)])  # the same row ids, other keys
    second.close()
    _remove_keys_file(a)
    shutil.copy(b / KEYS_FILE, a / KEYS_FILE)
    cache = Cache(a)
    assert cache.get("k0100") is None
    assert _all_found(cache, range(10))
    cache.close()


def test_a_key_file_newer_than_its_rows_never_answers_with_another_row(tmp_path):
    cache = Cache(tmp_path)
    cache.put_many([cache_entry(i) for i in range(10)])
    cache.close()
    backup = tmp_path / "backup.sqlite3"
    shutil.copy(tmp_path / CACHE_FILE, backup)  # closed: the WAL is checkpointed
    cache = Cache(tmp_path)
    cache.put_many([cache_entry(i) for i in range(10, 20)])  # ids 11-20
    cache.close()
    shutil.copy(backup, tmp_path / CACHE_FILE)  # the rows of ids 11-20 are gone again
    cache = Cache(tmp_path)
    assert cache.get("k0015") is None
    # New rows take ids 11-20 again; the key file's old entries point at them.
    assert cache.put_many([cache_entry(i) for i in range(30, 40)]) == 10
    assert cache.get("k0015") is None and not cache.contains("k0015")
    assert cache.get("k0035").text == cache_entry(35).text
    # And the lost answer can be stored again, under its own key.
    assert cache.put_many([cache_entry(15)]) == 1
    assert cache.get("k0015").text == cache_entry(15).text
    cache.close()


def test_a_cache_of_the_first_schema_is_migrated_with_every_row(tmp_path):
    with sqlite3.connect(tmp_path / CACHE_FILE) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT)")
        conn.executescript(MIGRATIONS[0])
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        conn.executemany(
            "INSERT INTO responses (key, created_at, base_url, model, status, text, parsed, "
            "request, response) VALUES (?, 1.5, 'u', 'm', 'ok', ?, ?, ?, '[]')",
            [(f"k{i:04d}", f"old {i}", '{"n": 1}' if i == 7 else None, "{}") for i in range(40)],
        )
        conn.execute("INSERT INTO batches VALUES ('b1', 'u', 'f1', 'submitted', 1.0, 1.0, 2)")
    cache = Cache(tmp_path)
    keys = [f"k{i:04d}" for i in range(40)]
    assert _texts(cache, keys) == {k: f"old {i}" for i, k in enumerate(keys)}
    assert cache.get("k0007").parsed == {"n": 1}
    assert cache.open_batches() == [("b1", "u", "submitted")]
    assert cache.put_many([cache_entry(3), cache_entry(40)]) == 1
    assert cache.count() == 41
    cache.close()
    with sqlite3.connect(tmp_path / CACHE_FILE) as conn:
        version = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        assert version == (str(SCHEMA_VERSION),)
        ids = [r[0] for r in conn.execute("SELECT id FROM responses WHERE id <= 40 ORDER BY id")]
        keys_in_order = [r[0] for r in conn.execute("SELECT key FROM responses ORDER BY id")]
    assert ids == list(range(1, 41))
    assert keys_in_order == keys + ["k0040"]


def test_a_damaged_key_file_is_named_and_deleting_it_recovers_every_answer(tmp_path):
    cache = Cache(tmp_path)
    cache.put_many([cache_entry(i) for i in range(5)])
    cache.close()
    _remove_keys_file(tmp_path)
    (tmp_path / KEYS_FILE).write_bytes(b"not a database" * 300)
    with pytest.raises(CacheError) as exc_info:
        Cache(tmp_path)
    assert KEYS_FILE in str(exc_info.value)
    (tmp_path / KEYS_FILE).unlink()
    cache = Cache(tmp_path)
    assert _all_found(cache, range(5))
    cache.close()
