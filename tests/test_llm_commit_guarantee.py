"""No result is handed to the caller before its cache entry is committed: checked from a
second connection as each result arrives, after a kill -9 at the commit fault point
(everything the caller saw comes back from the cache, nothing committed is sent twice), and
after the caller stops early (what was stored is consistent and not sent again). Failures
are yielded, never stored; of duplicate keys the first answer is kept."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pytest

from builder.llm import open_engine
from builder.llm.cache import CACHE_FILE, Cache, CacheEntry
from builder.settings.llm import LLMSettings
from tests.support.engine import (
    RERUN_HEADERS,
    assert_only_uncommitted_resent,
    fake_settings,
    run_engine_killed,
    user_request,
)
from tests.support.fake_openai_server import FakeOpenAIServer


def _settings(srv: FakeOpenAIServer, **kw) -> LLMSettings:
    return fake_settings(srv, kw.pop("max_concurrency", 8), **kw)


_req = user_request


def _stored(path: Path, key: str) -> bool:
    """Whether ``key`` is committed, as another process would see it."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None
    finally:
        conn.close()


@pytest.mark.parametrize("raw", [False, True])
def test_every_result_is_committed_before_the_caller_sees_it(tmp_path, raw):
    srv = FakeOpenAIServer().start()
    try:
        requests = [_req(f"r{i}", f"question {i}") for i in range(300)]
        requests.append(_req("dup", "question 7"))  # identical to r7: answered once
        seen = []
        with open_engine(_settings(srv), cache_dir=tmp_path, progress=False) as engine:
            run = engine.run_with_responses(requests) if raw else engine.run(requests)
            for got in run:
                result = got[0] if raw else got
                assert result.ok, result.error
                assert _stored(tmp_path / CACHE_FILE, result.request_sha256), result.request_id
                seen.append(result.request_id)
        assert sorted(seen) == sorted(r.id for r in requests)
        assert srv.count("chat") == 300
    finally:
        srv.stop()


def test_failures_are_yielded_but_never_stored(tmp_path):
    def faults(index, body):
        return "400" if body["messages"][0]["content"].startswith("bad") else None

    srv = FakeOpenAIServer(faults=faults).start()
    try:
        requests = [_req(f"r{i}", f"{'bad' if i % 3 == 0 else 'good'} {i}") for i in range(60)]
        with open_engine(_settings(srv), cache_dir=tmp_path, progress=False) as engine:
            results = {r.request_id: r for r in engine.run(requests)}
        assert len(results) == 60
        failed = [r for r in results.values() if r.status == "failed"]
        assert len(failed) == 20
        assert Cache(tmp_path).count() == 40
    finally:
        srv.stop()


@pytest.mark.parametrize("commit", [1, 3])
def test_kill_9_at_a_commit_loses_no_result_the_caller_saw(tmp_path, commit):
    n = 120
    srv = FakeOpenAIServer(record=True).start()
    try:
        proc = run_engine_killed(
            srv, tmp_path, n, fault=f"llm.cache.commit:{commit}", concurrency=4
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        journaled = set(proc.stdout.split())
        committed = Cache(tmp_path).count()
        assert 1 <= committed < n
        assert len(journaled) <= committed

        requests = [_req(f"r{i}", f"q{i}") for i in range(n)]
        rerun = _settings(srv, max_concurrency=4, default_headers=RERUN_HEADERS)
        with open_engine(rerun, cache_dir=tmp_path, progress=False) as engine:
            results = list(engine.run(requests))
        assert sorted(r.request_id for r in results) == sorted(r.id for r in requests)
        cached = {r.request_id for r in results if r.cached}
        assert journaled <= cached  # everything the caller saw is answered by the cache
        assert len(cached) == committed
        assert_only_uncommitted_resent(srv, requests, cached)  # nothing committed re-sent
    finally:
        srv.stop()


def test_a_caller_that_stops_early_leaves_a_consistent_cache_and_no_resend(tmp_path):
    n = 200
    srv = FakeOpenAIServer(record=True).start()
    try:
        requests = [_req(f"r{i}", f"q{i}") for i in range(n)]
        with open_engine(_settings(srv), cache_dir=tmp_path, progress=False) as engine:
            for i, _ in enumerate(engine.run(requests)):
                if i == 30:
                    break  # the generator is closed with work in flight and being stored
        with sqlite3.connect(tmp_path / CACHE_FILE) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = Cache(tmp_path).count()
        assert 31 <= stored <= n
        rerun = _settings(srv, default_headers=RERUN_HEADERS)
        with open_engine(rerun, cache_dir=tmp_path, progress=False) as engine:
            results = list(engine.run(requests))
        cached = {r.request_id for r in results if r.cached}
        assert len(cached) == stored
        assert_only_uncommitted_resent(srv, requests, cached)
    finally:
        srv.stop()


def _entry(key: str, status: str = "ok") -> CacheEntry:
    return CacheEntry(
        key=key,
        base_url="http://127.0.0.1:1/v1",
        model="m",
        status=status,
        text="t",
        parsed=None,
        finish_reason="stop",
        prompt_tokens=1,
        completion_tokens=1,
        cost=0.0,
        latency_s=0.1,
        attempts=1,
        error=None,
        request="{}",
        response="[{}]",
    )


def test_put_many_keeps_the_first_of_duplicate_keys(tmp_path):
    cache = Cache(tmp_path)
    assert cache.put_many([_entry(f"k{i}") for i in range(10)]) == 10
    # keys repeat within the batch and against the 10 already stored
    batch = [_entry(f"k{i % 50}") for i in range(75)]
    batch = [CacheEntry(**{**e.__dict__, "text": f"second {n}"}) for n, e in enumerate(batch)]
    assert cache.put_many(batch) == 40
    assert cache.count() == 50
    assert cache.get("k3").text == "t"  # stored first: kept
    assert cache.get("k20").text == "second 20"  # first of k20 in the batch (not n=70)
    assert cache.get("k49").text == "second 49"
    cache.close()
