"""The engine's admission in batches and the cache behind it: batched lookups, large pages
for new files, and a kill right after a cache commit (nothing committed is paid twice)."""

from __future__ import annotations

import signal
import sqlite3

from builder.llm import open_engine
from builder.llm.cache import CACHE_FILE, PAGE_SIZE, Cache
from builder.settings.llm import LLMSettings
from tests.support.cache import cache_entry
from tests.support.engine import (
    RERUN_HEADERS,
    assert_only_uncommitted_resent,
    fake_settings,
    run_engine_killed,
    user_request,
)
from tests.support.fake_openai_server import FakeOpenAIServer, FakeReply


def _settings(srv: FakeOpenAIServer, **kw) -> LLMSettings:
    return fake_settings(srv, kw.pop("max_concurrency", 4), **kw)


_req = user_request


def test_get_many_answers_like_get_for_hits_misses_and_repeats(tmp_path):
    cache = Cache(tmp_path)
    cache.put_many([cache_entry(i) for i in range(600)])  # more keys than one lookup query takes
    keys = [f"k{i:04d}" for i in range(0, 600, 1)] + ["missing", "k0003", "k0599"]
    found = cache.get_many(keys)
    assert sorted(found) == [f"k{i:04d}" for i in range(600)]
    for key, hit in found.items():
        assert hit == cache.get(key)
    assert found["k0007"].parsed == {"n": 7} and found["k0008"].parsed is None
    assert cache.get_many([]) == {} and cache.get_many(["nope"]) == {}
    cache.close()


def test_new_cache_files_get_large_pages_and_old_files_keep_theirs(tmp_path):
    new = Cache(tmp_path / "new")
    new.put_many([cache_entry(1)])
    new.close()
    with sqlite3.connect(tmp_path / "new" / CACHE_FILE) as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE

    # A file created with SQLite's default pages (as every cache before this change was)
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    conn = sqlite3.connect(old_dir / CACHE_FILE)
    conn.execute("PRAGMA page_size = 4096")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    old = Cache(old_dir)
    old.put_many([cache_entry(i) for i in range(20)])
    assert old.get_many(["k0003", "k0019"]).keys() == {"k0003", "k0019"}
    assert old.count() == 20
    old.close()
    with sqlite3.connect(old_dir / CACHE_FILE) as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 4096


def test_a_request_waiting_for_the_budget_sees_what_was_stored_meanwhile(tmp_path):
    """A, B and A again are looked up together (all misses). The budget takes one request
    at a time, so B waits and the second A waits behind it; A's answer is stored before
    they are admitted, so the second A is a cache hit (as if it had been looked up when
    admitted), not a third HTTP request."""
    srv = FakeOpenAIServer(
        responder=lambda body: FakeReply("ok", prompt_tokens=1, completion_tokens=1)
    ).start()
    try:
        s = _settings(
            srv, prices={"fake-model": {"input": 1000.0, "output": 1000.0}}, max_tokens=1000
        )
        requests = [_req("a", "same question"), _req("b", "other"), _req("a2", "same question")]
        with open_engine(s, cache_dir=tmp_path, progress=False) as engine:
            # the worst case of one request is ~$1.0 (1000 output tokens at $1000/M): one fits
            results = list(engine.run(requests, max_cost=1.5))
        by_id = {r.request_id: r for r in results}
        assert sorted(by_id) == ["a", "a2", "b"]
        assert [by_id[i].cached for i in ("a", "b", "a2")] == [False, False, True]
        assert by_id["a2"].text == by_id["a"].text == "ok"
        assert srv.count("chat") == 2
    finally:
        srv.stop()


def test_admission_pulls_at_most_a_window_ahead_and_keeps_the_order(tmp_path):
    srv = FakeOpenAIServer().start()
    try:
        s = _settings(srv, max_concurrency=2)  # window 8
        requests = [_req(f"r{i}", f"question {i}") for i in range(30)]
        with open_engine(s, cache_dir=tmp_path, progress=False) as engine:
            list(engine.run(requests[:10]))  # warm: the first 10 are cache hits next time
            pulled = 0

            def lazily():
                nonlocal pulled
                for r in requests:
                    pulled += 1
                    yield r

            got = []
            for result in engine.run(lazily()):
                got.append(result)
                if len(got) == 12:
                    break
        assert [r.request_id for r in got[:10]] == [f"r{i}" for i in range(10)]
        assert all(r.cached for r in got[:10])
        assert pulled <= 12 + 8
    finally:
        srv.stop()


def test_kill_9_right_after_a_cache_commit_loses_nothing_committed(tmp_path):
    """The engine stores each completed batch in one transaction. Killed (SIGKILL, from the
    ``llm.cache.commit`` fault point) right after its second commit, the cache holds exactly
    the committed results, and a rerun sends only the others."""
    n = 40  # window 8: at most 8 outcomes per commit, so the second commit comes early
    srv = FakeOpenAIServer(record=True).start()
    try:
        proc = run_engine_killed(srv, tmp_path, n, fault="llm.cache.commit:2", concurrency=2)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        with sqlite3.connect(tmp_path / CACHE_FILE) as conn:
            committed = conn.execute("SELECT count(*) FROM responses").fetchone()[0]
        assert 2 <= committed < n
        assert srv.count("chat") >= committed

        requests = [_req(f"r{i}", f"q{i}") for i in range(n)]
        rerun = _settings(srv, max_concurrency=2, default_headers=RERUN_HEADERS)
        with open_engine(rerun, cache_dir=tmp_path, progress=False) as engine:
            results = list(engine.run(requests))
        assert sorted(r.request_id for r in results) == sorted(r.id for r in requests)
        assert all(r.ok for r in results)
        cached = {r.request_id for r in results if r.cached}
        assert len(cached) == committed
        assert_only_uncommitted_resent(srv, requests, cached)  # nothing committed re-sent
    finally:
        srv.stop()
