"""The LLM response cache: one SQLite file (WAL) under the cache directory.

Why SQLite: one file, safe with several processes writing at once (WAL + busy timeout),
atomic per transaction (a kill -9 loses at most the transaction being written, never
corrupts earlier rows), and a primary-key lookup costs microseconds, so a warm rerun of a
whole corpus makes zero HTTP requests and little CPU.

What is stored, by cache key (``sha256`` of the canonical JSON of everything that is sent,
see ``builder.llm.endpoint``): the request body as sent (never the API key or any header),
the full response body, the outcome (``ok``, ``length`` or ``invalid``: all model outputs,
deterministic for a seed), usage, cost and timing. Failures (transport errors, HTTP 4xx/5xx
after retries) are never stored: a rerun tries them again.

Batch API jobs are recorded here too (``batches`` / ``batch_items``) the moment they are
submitted, so a killed process resumes polling instead of paying twice.

Keys are looked up in a second file beside it, ``llm-cache.keys.sqlite3`` (attached to
every connection): key -> row id, in SQLite's small default pages. A stored key dirties one
index leaf; in the main file's 32 KB pages each insert copied a 32 KB leaf to the WAL, which
was most of the cost of storing an entry (measured in bench/RESULTS.md, "Wave 14"). One
transaction writes both files, but in WAL mode SQLite commits them one after the other (the
main file first), so a kill between the two commits leaves rows the key file does not know:
every write transaction (and every open) first indexes the rows above the key file's
high-water mark, under the write lock, so they are found again and never stored twice. A
lookup also checks the row's own key, so a key file that outlived its main file (deleted,
restored from elsewhere) can miss but never answer with another request's row; a missing key
file is rebuilt from the rows.

The schema carries a version; ``MIGRATIONS`` upgrades older files in place (simonw/llm's
``migrations.py`` pattern). A file from a newer builder, a corrupt file or a lock held too
long is a ``CacheError`` that says which file and what to do.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from builder.errors import CacheError
from builder.util.faults import fault_point

T = TypeVar("T")

CACHE_FILE = "llm-cache.sqlite3"
#: the key index (attached as ``keyidx``): small pages, so storing a key writes 4 KB, not 32 KB
KEYS_FILE = "llm-cache.keys.sqlite3"
SCHEMA_VERSION = 2
#: page size of new cache files (SQLite's largest but one; existing files keep theirs)
PAGE_SIZE = 32768
#: keys looked up per SELECT (``_by_keys``; well under SQLite's bound on parameters)
_LOOKUP_CHUNK = 256

#: a response row's columns after its key, the same in schema versions 1 and 2 (frozen: a
#: new column is a new migration)
_RESPONSE_FIELDS = """created_at REAL NOT NULL,
        base_url TEXT NOT NULL,
        model TEXT NOT NULL,
        status TEXT NOT NULL,
        text TEXT,
        parsed TEXT,
        finish_reason TEXT,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        cost REAL NOT NULL DEFAULT 0,
        latency_s REAL NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 1,
        error TEXT,
        request TEXT NOT NULL,
        response TEXT NOT NULL"""
#: a response row's columns but its id (what ``put_many`` stores, what migration 2 copies)
_COPIED = (
    "key, created_at, base_url, model, status, text, parsed, finish_reason, prompt_tokens, "
    "completion_tokens, cost, latency_s, attempts, error, request, response"
)
_RESPONSE_COLUMNS = tuple(_COPIED.split(", "))

# Each entry upgrades the schema from version i to i+1 (index 0 creates it).
MIGRATIONS: list[str] = [
    f"""
    CREATE TABLE IF NOT EXISTS responses (
        key TEXT PRIMARY KEY,
        {_RESPONSE_FIELDS}
    );
    CREATE TABLE IF NOT EXISTS batches (
        batch_id TEXT PRIMARY KEY,
        base_url TEXT NOT NULL,
        input_file_id TEXT,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        n_items INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS batch_items (
        key TEXT NOT NULL,
        batch_id TEXT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (key, batch_id)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS batch_items_batch ON batch_items (batch_id);
    """,
    # 2: rows get an explicit id and lose the key's unique index (it moves to KEYS_FILE,
    # which ``_catch_up`` fills from the rows); the rows are copied in their order.
    f"""
    ALTER TABLE responses RENAME TO responses_v1;
    CREATE TABLE responses (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL,
        {_RESPONSE_FIELDS}
    );
    INSERT INTO responses ({_COPIED}) SELECT {_COPIED} FROM responses_v1 ORDER BY rowid;
    DROP TABLE responses_v1;
    """,
]
#: the key file's schema (created on every open: a lost key file is rebuilt from the rows)
_KEYS_SCHEMA = """
    CREATE TABLE IF NOT EXISTS keyidx.response_keys (
        key TEXT PRIMARY KEY,
        id INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS keyidx.indexed (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        cache_id TEXT NOT NULL,
        through INTEGER NOT NULL
    );
"""

_INSERT = (
    f"INSERT INTO responses (id, {', '.join(_RESPONSE_COLUMNS)}) "
    f"VALUES (?, {', '.join('?' for _ in _RESPONSE_COLUMNS)})"
)
#: a key's row, found through the key file and checked against the row's own key
_JOIN = (
    "FROM keyidx.response_keys AS k JOIN main.responses AS r ON r.id = k.id AND r.key = k.key "
    "WHERE k.key "
)
_COLUMNS = (
    "SELECT r.key, r.base_url, r.model, r.status, r.text, r.parsed, r.finish_reason, "
    "r.prompt_tokens, r.completion_tokens, r.cost, r.latency_s, r.error " + _JOIN
)
_SELECT = _COLUMNS + "= ?"
_SELECT_MANY = _COLUMNS + "IN "
_KEYS_IN = "SELECT k.key " + _JOIN + "IN "

#: outcomes that are model outputs and therefore cached; anything else is never stored
CACHEABLE_STATUSES = frozenset({"ok", "length", "invalid"})


@dataclass(frozen=True)
class CachedResponse:
    """One cached outcome (what a ``ChatResult`` needs; the raw bodies are fetched on demand)."""

    key: str
    base_url: str
    model: str
    status: str
    text: str | None
    parsed: Any
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cost: float
    latency_s: float
    error: str | None


@dataclass(frozen=True)
class CacheEntry:
    """A new outcome to store (see ``Cache.put_many``). ``request``/``response`` are JSON text."""

    key: str
    base_url: str
    model: str
    status: str
    text: str | None
    parsed: Any
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cost: float
    latency_s: float
    attempts: int
    error: str | None
    request: str
    response: str


def _response(row: Sequence[Any]) -> CachedResponse:
    """A ``CachedResponse`` from a row of ``_COLUMNS``."""
    parsed = json.loads(row[5]) if row[5] is not None else None
    return CachedResponse(row[0], row[1], row[2], row[3], row[4], parsed, *row[6:])  # type: ignore[arg-type]


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _by_keys(conn: sqlite3.Connection, select: str, keys: Sequence[str]) -> Iterator[Any]:
    """The rows of ``select`` (ending in ``IN``) for ``keys``, ``_LOOKUP_CHUNK`` keys per
    query (well under SQLite's bound on parameters)."""
    for i in range(0, len(keys), _LOOKUP_CHUNK):
        chunk = keys[i : i + _LOOKUP_CHUNK]
        yield from conn.execute(select + "(" + ",".join("?" * len(chunk)) + ")", chunk)


def _execute_all(conn: sqlite3.Connection, script: str) -> None:
    """Each statement of ``script`` in the transaction under way (``executescript`` would
    commit it first)."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _retry_locked(fn: Callable[[], T], seconds: float = 30.0) -> T:
    """``fn()``, retried with a short jittered pause while SQLite answers "locked"/"busy"
    without waiting (lock upgrades it refuses to wait for, to avoid deadlocks)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                raise
            time.sleep(0.02 + random.random() * 0.05)


class Cache:
    """The cache file of one directory. Thread-safe: one connection per thread.

    ``get`` is a primary-key lookup; ``put_many`` writes a batch of outcomes in one
    transaction (the engine writes every completed batch before yielding it).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / CACHE_FILE
        self.keys_path = self.directory / KEYS_FILE
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(
                f"cannot create the LLM cache directory: {exc.strerror}",
                file=self.directory,
                hint="pass --cache-dir or set CORPUS_CACHE_DIR to a writable directory",
            ) from None
        self._migrate(self._conn())

    # -- connections -------------------------------------------------------------------
    def _fail(self, exc: sqlite3.Error) -> CacheError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return CacheError(
                f"the LLM cache is locked by another process ({text})",
                file=self.path,
                hint="wait for the other run to finish, or point --cache-dir elsewhere",
            )
        return CacheError(
            f"the LLM cache is unreadable ({text})",
            file=self.path,
            hint=f"delete {self.keys_path.name} in {self.directory} (it is rebuilt from the "
            "answers) and try again; if that is not enough, delete the cache directory",
        )

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            conn = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA busy_timeout = 30000")
            # A new file gets large pages (no-op on an existing one): an entry (request,
            # response and text, ~6 KB) fits one page instead of an overflow chain, and the
            # WAL checkpoints copy fewer, larger pages. Halves the CPU of storing an entry.
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            conn.execute("ATTACH DATABASE ? AS keyidx", (str(self.keys_path),))
            for schema in ("main", "keyidx"):
                # Switching a new file to WAL takes an exclusive lock for which SQLite may
                # answer "locked" at once (no busy wait) while another process does the
                # same: retry.
                pragma = f"PRAGMA {schema}.journal_mode = WAL"
                mode = _retry_locked(lambda q=pragma: conn.execute(q).fetchone()[0])
                if str(mode).lower() != "wal":
                    raise sqlite3.DatabaseError(f"cannot switch to WAL mode (got {mode})")
                # NORMAL in WAL mode: a power cut may lose the last transactions, never
                # corrupt.
                conn.execute(f"PRAGMA {schema}.synchronous = NORMAL")
        except sqlite3.Error as exc:
            raise self._fail(exc) from None
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring the file to SCHEMA_VERSION in one write transaction (taken up front, so
        concurrent openers wait for each other instead of deadlocking on a lock upgrade)."""
        try:
            _retry_locked(lambda: conn.execute("BEGIN IMMEDIATE"))
            try:
                conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
                row = conn.execute(
                    "SELECT value FROM meta WHERE name = 'schema_version'"
                ).fetchone()
                version = int(row[0]) if row else 0
                if version > SCHEMA_VERSION:
                    raise CacheError(
                        f"the LLM cache was written by a newer builder (schema {version}, "
                        f"this one reads up to {SCHEMA_VERSION})",
                        file=self.path,
                        hint="upgrade the builder, or use another --cache-dir",
                    )
                while version < SCHEMA_VERSION:
                    _execute_all(conn, MIGRATIONS[version])
                    version += 1
                    conn.execute(
                        "INSERT OR REPLACE INTO meta (name, value) VALUES ('schema_version', ?)",
                        (str(version),),
                    )
                self._bind_keys(conn)
                self._catch_up(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._fail(exc) from None

    @staticmethod
    def _bind_keys(conn: sqlite3.Connection) -> None:
        """Create the key file's tables, and empty them when they belong to another main
        file (each main file has a random id, which its key file records)."""
        _execute_all(conn, _KEYS_SCHEMA)
        row = conn.execute("SELECT value FROM meta WHERE name = 'cache_id'").fetchone()
        if row is None:
            row = (uuid.uuid4().hex,)
            conn.execute("INSERT INTO meta (name, value) VALUES ('cache_id', ?)", row)
        bound = conn.execute("SELECT cache_id FROM keyidx.indexed").fetchone()
        if bound != row:
            conn.execute("DELETE FROM keyidx.response_keys")
            conn.execute(
                "INSERT OR REPLACE INTO keyidx.indexed (one, cache_id, through) VALUES (1, ?, 0)",
                row,
            )

    @staticmethod
    def _catch_up(conn: sqlite3.Connection) -> int:
        """Index the rows the key file does not know yet (a kill between the two files'
        commits, a lost key file, a migrated file); returns the highest row id. Runs inside
        a write transaction, so the rows above the mark are exactly those."""
        through = int(conn.execute("SELECT through FROM keyidx.indexed").fetchone()[0])
        top = int(conn.execute("SELECT coalesce(max(id), 0) FROM main.responses").fetchone()[0])
        if top != through:
            # Above the mark: rows never indexed. Below it (a key file newer than its rows):
            # nothing to add, and the lookups' key check ignores what it points to.
            conn.execute(
                "INSERT INTO keyidx.response_keys (key, id) "
                "SELECT key, min(id) FROM main.responses WHERE id > ? GROUP BY key "
                "ON CONFLICT (key) DO UPDATE SET id = excluded.id WHERE NOT EXISTS "
                "(SELECT 1 FROM main.responses AS r WHERE r.id = response_keys.id "
                "AND r.key = response_keys.key)",
                (through,),
            )
            conn.execute("UPDATE keyidx.indexed SET through = ?", (top,))
        return top

    def close(self) -> None:
        """Close every connection this object opened (from any thread)."""
        with self._lock:
            conns, self._connections = self._connections, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()

    # -- responses ---------------------------------------------------------------------
    def get(self, key: str) -> CachedResponse | None:
        """The cached outcome for ``key``, or None."""
        try:
            row = self._conn().execute(_SELECT, (key,)).fetchone()
        except sqlite3.Error as exc:
            raise self._fail(exc) from None
        if row is None:
            return None
        return _response(row)

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedResponse]:
        """The cached outcomes of those of ``keys`` that are cached, by key: one query per
        few hundred keys instead of one per key (the engine looks up a whole admission
        batch at once)."""
        try:
            rows = list(_by_keys(self._conn(), _SELECT_MANY, list(dict.fromkeys(keys))))
        except sqlite3.Error as exc:
            raise self._fail(exc) from None
        return {row[0]: _response(row) for row in rows}

    def get_any(self, keys: Sequence[str]) -> CachedResponse | None:
        """The first of ``keys`` that is cached (several endpoints: one key per endpoint)."""
        for key in keys:
            hit = self.get(key)
            if hit is not None:
                return hit
        return None

    def contains(self, key: str) -> bool:
        try:
            row = self._conn().execute("SELECT 1 " + _JOIN + "= ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise self._fail(exc) from None
        return row is not None

    def raw(self, key: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The request body as sent and the full response body stored under ``key``."""
        try:
            row = (
                self._conn()
                .execute("SELECT r.request, r.response " + _JOIN + "= ?", (key,))
                .fetchone()
            )
        except sqlite3.Error as exc:
            raise self._fail(exc) from None
        if row is None:
            return None
        return json.loads(row[0]), json.loads(row[1])

    def put_many(self, entries: Iterable[CacheEntry]) -> int:
        """Store outcomes in one transaction; returns how many rows were new.

        Only ``CACHEABLE_STATUSES`` are stored; anything else raises ``ValueError`` (a
        failure must never reach the cache). An existing key is kept (first writer wins:
        the same key means the same request, and keeping the first answer keeps reruns
        stable even against a non-deterministic server).
        """
        rows = []
        now = time.time()
        for e in entries:
            if e.status not in CACHEABLE_STATUSES:
                raise ValueError(f"refusing to cache a {e.status!r} outcome")
            rows.append(
                (
                    e.key,
                    now,
                    e.base_url,
                    e.model,
                    e.status,
                    e.text,
                    _json_or_none(e.parsed),
                    e.finish_reason,
                    e.prompt_tokens,
                    e.completion_tokens,
                    e.cost,
                    e.latency_s,
                    e.attempts,
                    e.error,
                    e.request,
                    e.response,
                )
            )
        if not rows:
            return 0
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                top = self._catch_up(conn)
                stored = {k for (k,) in _by_keys(conn, _KEYS_IN, [r[0] for r in rows])}
                fresh = []
                for r in rows:
                    if r[0] not in stored:
                        stored.add(r[0])
                        fresh.append((top + len(fresh) + 1, *r))
                if fresh:
                    conn.executemany(_INSERT, fresh)
                    conn.executemany(
                        "INSERT OR REPLACE INTO keyidx.response_keys (key, id) VALUES (?, ?)",
                        [(r[1], r[0]) for r in fresh],
                    )
                    conn.execute("UPDATE keyidx.indexed SET through = ?", (top + len(fresh),))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._fail(exc) from None
        fault_point("llm.cache.commit")
        return len(fresh)

    def count(self) -> int:
        try:
            return int(self._conn().execute("SELECT count(*) FROM responses").fetchone()[0])
        except sqlite3.Error as exc:
            raise self._fail(exc) from None

    # -- batch jobs --------------------------------------------------------------------
    def add_batch(
        self,
        batch_id: str,
        base_url: str,
        input_file_id: str | None,
        items: Sequence[tuple[str, str]],
    ) -> None:
        """Record a submitted batch and its items ``(key, body JSON)`` at once (before any
        polling), so a later process can judge the answers without the original requests."""
        now = time.time()
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (batch_id, base_url, input_file_id, "submitted", now, now, len(items)),
                )
                conn.executemany(
                    "INSERT OR IGNORE INTO batch_items (key, batch_id, body) VALUES (?, ?, ?)",
                    [(k, batch_id, body) for k, body in items],
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._fail(exc) from None

    def set_batch_status(self, batch_id: str, status: str) -> None:
        try:
            self._conn().execute(
                "UPDATE batches SET status = ?, updated_at = ? WHERE batch_id = ?",
                (status, time.time(), batch_id),
            )
        except sqlite3.Error as exc:
            raise self._fail(exc) from None

    def open_batches(self, base_url: str | None = None) -> list[tuple[str, str, str]]:
        """(batch_id, base_url, status) of batches not yet ingested, oldest first."""
        sql = "SELECT batch_id, base_url, status FROM batches WHERE status NOT IN ('ingested')"
        args: tuple[Any, ...] = ()
        if base_url is not None:
            sql += " AND base_url = ?"
            args = (base_url,)
        try:
            return [tuple(r) for r in self._conn().execute(sql + " ORDER BY created_at", args)]
        except sqlite3.Error as exc:
            raise self._fail(exc) from None

    def batch_of(self, key: str) -> str | None:
        """The open batch that ``key`` was submitted in, if any."""
        try:
            row = (
                self._conn()
                .execute(
                    "SELECT b.batch_id FROM batch_items i JOIN batches b USING (batch_id) "
                    "WHERE i.key = ? AND b.status != 'ingested' ORDER BY b.created_at DESC LIMIT 1",
                    (key,),
                )
                .fetchone()
            )
        except sqlite3.Error as exc:
            raise self._fail(exc) from None
        return row[0] if row else None

    def batch_items(self, batch_id: str) -> dict[str, str]:
        """key -> request body JSON of every item of a batch."""
        try:
            return dict(
                self._conn().execute(
                    "SELECT key, body FROM batch_items WHERE batch_id = ?", (batch_id,)
                )
            )
        except sqlite3.Error as exc:
            raise self._fail(exc) from None
