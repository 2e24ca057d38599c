"""Batch API mode against the fake server: submit, record, poll, ingest, expire, resume."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.errors import BudgetExceeded, ConfigError
from builder.llm import open_engine
from builder.records import ChatRequest
from builder.settings.llm import LLMSettings
from tests.support.fake_openai_server import FakeOpenAIServer

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "integer"}},
    "required": ["a"],
    "additionalProperties": False,
}


def settings_for(srv: FakeOpenAIServer, **kw) -> LLMSettings:
    base = dict(
        base_url=srv.base_url,
        model="fake-model",
        batch=True,
        batch_poll_s=0.02,
        backoff_base_s=0.01,
        backoff_max_s=0.02,
    )
    base.update(kw)
    return LLMSettings(**base)


def req(i: int, **kw) -> ChatRequest:
    return ChatRequest(id=f"r{i}", messages=({"role": "user", "content": f"q{i}"},), **kw)


def test_batch_mode_runs_everything_through_one_batch_and_caches_it():
    with FakeOpenAIServer() as srv:
        requests = [req(i) for i in range(10)] + [req(10, schema=SCHEMA)]
        with open_engine(settings_for(srv), progress=False) as engine:
            results = {r.request_id: r for r in engine.run(requests)}
            batches = engine.cache.open_batches()
        assert len(results) == 11 and all(r.ok for r in results.values())
        assert results["r0"].text == "Echo: q0 (seed=0)" and results["r10"].parsed == {"a": 1}
        assert srv.count("batches") == 1 and srv.count("files") == 1 and srv.count("chat") == 0
        assert batches == []  # ingested
        # the same requests online: all cached
        with open_engine(settings_for(srv, batch=False), progress=False) as engine:
            again = list(engine.run(requests))
        assert len(again) == 11 and all(r.cached for r in again) and srv.count("chat") == 0


def test_expired_items_are_resubmitted():
    with FakeOpenAIServer(batch_expire=3) as srv:
        with open_engine(settings_for(srv), progress=False) as engine:
            results = list(engine.run([req(i) for i in range(8)]))
        assert len(results) == 8 and all(r.ok for r in results)
        assert srv.count("batches") == 2
        second = list(srv.batches.values())[1]
        assert second["request_counts"]["total"] == 3


def test_failed_batch_items_are_failed_results_and_not_cached():
    with FakeOpenAIServer() as srv:
        srv.faults = lambda i, body: "400" if body["messages"][0]["content"] == "q1" else None
        with open_engine(settings_for(srv), progress=False) as engine:
            results = {r.request_id: r for r in engine.run([req(i) for i in range(3)])}
            assert results["r1"].status == "failed" and "HTTP 400" in results["r1"].error
            assert not engine.is_cached(req(1)) and engine.is_cached(req(0))


def test_invalid_structured_batch_answers_get_an_online_repair():
    with FakeOpenAIServer() as srv:
        srv.responder = lambda body: (
            '{"a": 5}' if len(body["messages"]) > 1 else '{"a": "not an integer"}'
        )
        with open_engine(settings_for(srv), progress=False) as engine:
            (result,) = list(engine.run([req(0, schema=SCHEMA)]))
        assert result.ok and result.parsed == {"a": 5}
        assert srv.count("chat") == 1  # the repair went online


def test_batch_mode_needs_a_remote_endpoint():
    with open_engine(LLMSettings(batch=True), progress=False) as engine:
        with pytest.raises(ConfigError, match="Batch API"):
            list(engine.run([req(0)]))


def test_batch_budget_uses_batch_prices():
    with FakeOpenAIServer() as srv:
        prices = {"fake-model": {"input": 1000.0, "output": 1000.0, "batch_output": 500.0}}
        s = settings_for(srv, prices=prices, max_tokens=20)
        with open_engine(s, progress=False) as engine:
            with pytest.raises(BudgetExceeded):
                list(engine.run([req(i) for i in range(10)], max_cost=0.1))
            sent = srv.count("batches")
        assert sent == 1
        submitted = list(srv.batches.values())[0]["request_counts"]["total"]
        assert 0 < submitted < 10


_KILLED = """
import sys
sys.path.insert(0, {root!r})
from builder.llm import open_engine
from builder.records import ChatRequest
from builder.settings.llm import LLMSettings
s = LLMSettings(base_url={url!r}, model="fake-model", batch=True, batch_poll_s=0.05)
reqs = [ChatRequest(id=f"r{{i}}", messages=({{"role": "user", "content": f"q{{i}}"}},))
        for i in range(5)]
with open_engine(s, cache_dir={cache!r}, progress=False) as engine:
    list(engine.run(reqs))
"""


def test_a_killed_batch_run_resumes_polling_instead_of_resubmitting(tmp_path):
    cache = tmp_path / "cache"
    with FakeOpenAIServer(batch_delay=60) as srv:  # the batch stays in progress
        code = _KILLED.format(root=str(ROOT), url=srv.base_url, cache=str(cache))
        proc = subprocess.Popen([sys.executable, "-c", code])
        deadline = time.monotonic() + 120  # a bound for a slow machine, not an ordering
        while srv.count("batch_status") < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert srv.count("batch_status") >= 2, "the batch was never polled"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        db = sqlite3.connect(cache / "llm-cache.sqlite3")
        (batch_id,) = db.execute("SELECT batch_id FROM batches").fetchone()
        db.close()
        assert batch_id in srv.batches
        srv.batches[batch_id]["_ready_at"] = 0  # now it completes
        s = settings_for(srv)
        with open_engine(s, cache_dir=cache, progress=False) as engine:
            reqs = [req(i) for i in range(5)]
            results = list(engine.run(reqs))
        assert len(results) == 5 and all(r.ok for r in results)
        assert srv.count("batches") == 1  # polled the recorded batch, did not pay twice
