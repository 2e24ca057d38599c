"""The engine against the loopback fake server: results, cache, faults, retries, AIMD, budget."""

from __future__ import annotations

import asyncio
import io
import json
import re
import sqlite3
import threading
from pathlib import Path

import pytest

from builder.errors import AuthError, BudgetExceeded, CacheError, ConfigError, LLMError, QuotaError
from builder.llm import Engine, open_engine, resolve_cache_dir
from builder.llm.base import LLM
from builder.llm.cache import Cache, CacheEntry
from builder.llm.endpoint import CACHE_FORMAT, Endpoint, cache_key, request_body
from builder.llm.progress import BarProgress, LogProgress, Snapshot
from builder.records import ChatRequest, canonical_json, sha256_hex
from builder.settings.llm import LLMSettings
from tests.support.fake_openai_server import FakeOpenAIServer, FakeReply, Fault, sporadic_429

SCHEMA = {
    "title": "Answer",
    "type": "object",
    "properties": {"answer": {"type": "string"}, "score": {"type": "integer"}},
    "required": ["answer", "score"],
    "additionalProperties": False,
}


def settings_for(srv: FakeOpenAIServer, **kw) -> LLMSettings:
    base = dict(
        base_url=srv.base_url,
        model="fake-model",
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        # long: an answer that a loaded CPU delays must not time out and be sent again (the
        # tests count requests); a test of a hanging server sets its own
        read_timeout_s=30.0,
        connect_timeout_s=2.0,
        max_concurrency=8,
    )
    base.update(kw)
    return LLMSettings(**base)


def req(i: int, **kw) -> ChatRequest:
    return ChatRequest(id=f"r{i}", messages=({"role": "user", "content": f"question {i}"},), **kw)


def run_all(settings: LLMSettings, requests, **kw):
    with open_engine(settings, progress=False) as engine:
        results = list(engine.run(requests, **kw))
        return results, engine.stats


@pytest.fixture
def srv():
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture(params=["http", "aiohttp", "openai"])
def transport(request) -> str:
    """The fault-injection tests run on every transport: the lean client, raw aiohttp and the
    openai client."""
    return request.param


def test_engine_satisfies_the_llm_protocol_and_answers_every_request(srv):
    requests = [req(i, metadata={"unit": i}) for i in range(20)]
    with open_engine(settings_for(srv), progress=False) as engine:
        assert isinstance(engine, LLM)
        assert engine.model_name == "fake-model"
        results = list(engine.run(requests))
        by_id = {r.request_id: r for r in results}
        assert set(by_id) == {r.id for r in requests}
        for request in requests:
            r = by_id[request.id]
            assert r.status == "ok" and not r.cached
            assert r.text == f"Echo: {request.messages[0]['content']} (seed=0)"
            assert r.metadata == request.metadata
            assert r.request_sha256 == engine.request_sha256(request)
            assert r.prompt_tokens > 0 and r.completion_tokens > 0
            assert r.model == "fake-model" and r.finish_reason == "stop"
        assert engine.complete(req(99)).text.startswith("Echo: question 99")
    assert srv.count() == 21


def test_warm_rerun_makes_zero_http_requests(srv, transport):
    requests = [req(i) for i in range(30)]
    first, _ = run_all(settings_for(srv, transport=transport), requests)
    sent = srv.count("all")
    second, stats = run_all(settings_for(srv, transport=transport), requests)
    assert srv.count("all") == sent
    assert all(r.cached for r in second) and stats.cached == 30 and stats.http_requests == 0
    assert {(r.request_id, r.text) for r in first} == {(r.request_id, r.text) for r in second}


def test_defaults_are_sent_explicitly_and_are_part_of_the_key(srv):
    s = settings_for(srv, seed=7, temperature=0.3)
    run_all(s, [req(0), req(1, sample_index=2), req(2, params={"temperature": 0.9, "seed": 1})])
    bodies = {b["messages"][0]["content"]: b for b in srv.requests}
    b0, b1, b2 = bodies["question 0"], bodies["question 1"], bodies["question 2"]
    assert (b0["seed"], b0["temperature"], b0["top_p"], b0["max_tokens"]) == (7, 0.3, 1.0, 1024)
    assert b1["seed"] == 9  # seed + sample_index
    assert (b2["seed"], b2["temperature"]) == (1, 0.9)
    assert "top_k" not in b0 and "repeat_penalty" not in b0  # OpenAI rejects llama.cpp knobs
    ep = Endpoint(base_url="http://x/v1", model="m", kind="llama.cpp")
    body = request_body(ep, req(0), s)
    assert (body["top_k"], body["min_p"], body["repeat_penalty"]) == (40, 0.05, 1.0)
    # the same request with a changed default is another request
    with (
        open_engine(s, progress=False) as a,
        open_engine(settings_for(srv, seed=8), progress=False) as b,
    ):
        assert a.request_sha256(req(0)) != b.request_sha256(req(0))
        assert a.request_sha256(req(0)) == a.request_sha256(req(0, params={"seed": 7}))


def test_cache_key_is_sha256_of_canonical_json_of_what_is_sent():
    ep = Endpoint(base_url="http://h:1/v1/", model="m")
    body = request_body(ep, req(3, sample_index=1, schema=SCHEMA), LLMSettings())
    expected = sha256_hex(
        {"base_url": "http://h:1/v1", "body": body, "sample_index": 1, "v": CACHE_FORMAT}
    )
    assert cache_key(ep, canonical_json(body), 1) == expected


@pytest.mark.parametrize(
    "fault",
    ["429", "500", "503", "502", "408", "409", "reset", "malformed", "truncate", "hang"],
)
def test_each_transient_fault_is_retried_until_it_succeeds(srv, fault, transport):
    srv.faults = [fault, fault]
    # a short read timeout only where the server hangs: an answer that a loaded CPU delays
    # must not time out (the count below would change)
    timeout = 1.0 if fault == "hang" else 30.0
    results, stats = run_all(
        settings_for(srv, transport=transport, read_timeout_s=timeout, max_concurrency=1),
        [req(0)],
    )
    assert results[0].status == "ok", results[0].error
    assert srv.count() == 3 and stats.retries == 2


def test_truncated_stream_is_retried_in_stream_mode(srv, transport):
    srv.faults = ["truncate", "malformed"]
    results, stats = run_all(
        settings_for(srv, transport=transport, stream=True, max_concurrency=1), [req(0)]
    )
    assert results[0].status == "ok"
    assert results[0].text == "Echo: question 0 (seed=0)"
    assert srv.requests[-1]["stream"] is True and srv.count() == 3


def test_a_request_that_keeps_failing_is_recorded_not_cached_and_the_run_goes_on(srv):
    srv.faults = lambda i, body: "503" if body["messages"][0]["content"] == "question 1" else None
    s = settings_for(srv, max_attempts=3)
    results, stats = run_all(s, [req(i) for i in range(4)])
    by_id = {r.request_id: r for r in results}
    assert [by_id[f"r{i}"].status for i in range(4)] == ["ok", "failed", "ok", "ok"]
    assert "gave up after 3 attempts" in by_id["r1"].error and "503" in by_id["r1"].error
    assert stats.failed == 1
    srv.faults = None
    before = srv.count()
    again, stats = run_all(s, [req(i) for i in range(4)])
    assert srv.count() == before + 1  # only the failed one is sent again
    assert {r.request_id: r.status for r in again}["r1"] == "ok"


def test_retry_time_cap(srv):
    srv.faults = lambda i, body: Fault("429", retry_after=0.2)
    s = settings_for(srv, max_retry_time_s=0.3, max_attempts=50)
    results, _ = run_all(s, [req(0)])
    assert results[0].status == "failed" and "max_retry_time_s" in results[0].error
    assert srv.count() <= 3


def test_retry_after_is_honoured(srv, transport):
    # Retry-After: 1000 s with max_retry_time_s = 60: a client that waits as told can only
    # give up, at once; one that ignored it would retry after its ~0.01 s backoff and succeed.
    srv.faults = [Fault("429", retry_after=1000)]
    s = settings_for(srv, transport=transport, max_concurrency=1, max_retry_time_s=60)
    results, _ = run_all(s, [req(0)])
    assert results[0].status == "failed" and "max_retry_time_s=60" in results[0].error
    assert srv.count() == 1
    srv.faults = [Fault("429", retry_after=0.05)]  # a short one is waited out, then it works
    srv.reset_counts()
    results, _ = run_all(s, [req(1)])
    assert results[0].ok and srv.count() == 2


def test_retry_after_delays_only_the_request_that_got_it(srv):
    # r0 is told to come back in 1000 s; the others go on meanwhile (no global pause)
    srv.faults = lambda i, body: (
        Fault("429", retry_after=1000) if body["messages"][0]["content"] == "question 0" else None
    )
    s = settings_for(srv, max_concurrency=2, max_retry_time_s=60)
    results, _ = run_all(s, [req(i) for i in range(10)])
    by_id = {r.request_id: r for r in results}
    assert len(by_id) == 10 and by_id["r0"].status == "failed"
    assert all(by_id[f"r{i}"].ok for i in range(1, 10))


def test_400_fails_fast_for_that_request_only(srv, transport):
    srv.faults = lambda i, body: "400" if body["messages"][0]["content"] == "question 2" else None
    results, stats = run_all(settings_for(srv, transport=transport), [req(i) for i in range(5)])
    bad = [r for r in results if r.status == "failed"]
    assert [r.request_id for r in bad] == ["r2"] and "HTTP 400" in bad[0].error
    assert srv.count() == 5  # not retried


@pytest.mark.parametrize(
    ("fault", "error"), [("401", AuthError), ("quota", QuotaError), ("404", LLMError)]
)
def test_auth_quota_and_wrong_url_stop_the_run_with_one_clear_error(srv, fault, error, transport):
    srv.faults = lambda i, body: fault if i >= 3 else None
    s = settings_for(srv, transport=transport, max_concurrency=1)
    got = []
    with pytest.raises(error) as exc_info:
        with open_engine(s, progress=False) as engine:
            for r in engine.run([req(i) for i in range(50)]):
                got.append(r)
    assert [r.request_id for r in got] == ["r0", "r1", "r2"]  # finished work was yielded
    assert srv.count() < 10  # not retried, the run stopped
    assert srv.base_url in str(exc_info.value)


def test_api_key_is_sent_but_never_written(srv, tmp_path, monkeypatch, capfd, transport):
    key = "sk-test-SECRET-0123456789abcdef"
    monkeypatch.setenv("MY_KEY", key)
    srv.api_key = key
    s = settings_for(srv, transport=transport, api_key_env="MY_KEY", max_concurrency=1)
    results, _ = run_all(s, [req(i) for i in range(3)])
    assert len(results) == 3 and all(r.ok for r in results)
    assert srv.headers[0]["Authorization"] == f"Bearer {key}"
    assert key not in repr(results) and key not in repr(s)
    # a wrong key: the error names the variable's endpoint, not the key
    monkeypatch.setenv("MY_KEY", "sk-wrong-SECRET-99999999999")
    with pytest.raises(AuthError) as exc_info:
        run_all(s, [req(10)])
    assert "SECRET" not in str(exc_info.value)
    out, err = capfd.readouterr()
    assert "SECRET" not in out + err
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert any(p.name.endswith(".sqlite3") for p in files)  # the cache was written here
    for path in files:
        assert b"SECRET" not in path.read_bytes(), path


def test_missing_key_variable_is_a_config_error(srv):
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE"):
        Engine(settings_for(srv, api_key_env="NOT_SET_ANYWHERE"))


def test_length_finish_is_a_recorded_failure_class_and_cached(srv, transport):
    srv.faults = ["length"]
    results, _ = run_all(settings_for(srv, transport=transport, max_concurrency=1), [req(0)])
    assert results[0].status == "length" and results[0].finish_reason == "length"
    again, _ = run_all(settings_for(srv, transport=transport), [req(0)])
    assert again[0].cached and again[0].status == "length" and srv.count() == 1


def test_structured_output_is_sent_in_each_backends_form_and_validated(srv, transport):
    r = req(0, schema=SCHEMA)
    results, _ = run_all(settings_for(srv, transport=transport), [r])
    assert results[0].ok and results[0].parsed == {"answer": "x", "score": 1}
    rf = srv.requests[0]["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["strict"] is True
    assert rf["json_schema"]["schema"] == SCHEMA and rf["json_schema"]["name"] == "Answer"
    run_all(settings_for(srv, transport=transport, kind="llama.cpp"), [r])
    assert srv.requests[1]["response_format"] == {"type": "json_object", "schema": SCHEMA}


def test_schema_fields_are_sent_in_schema_order_and_keys_ignore_order(srv):
    # Grammar-constrained decoders write fields in schema order: "problem" must come before
    # "final_answer", so the body keeps the schema's order; the cache key does not depend on it.
    ordered = {
        "title": "Exercise",
        "type": "object",
        "properties": {"problem": {"type": "string"}, "final_answer": {"type": "string"}},
        "required": ["problem", "final_answer"],
    }
    reordered = {**ordered, "properties": dict(reversed(list(ordered["properties"].items())))}
    srv.responder = lambda body: '{"problem": "p", "final_answer": "1"}'
    results, _ = run_all(settings_for(srv, kind="llama.cpp"), [req(0, schema=ordered)])
    assert results[0].ok
    sent = srv.requests[0]["response_format"]["schema"]["properties"]
    assert list(sent) == ["problem", "final_answer"]
    with open_engine(settings_for(srv, kind="llama.cpp"), progress=False) as engine:
        assert engine.request_sha256(req(0, schema=ordered)) == engine.request_sha256(
            req(0, schema=reordered)
        )


def test_raw_newlines_inside_json_strings_are_accepted(srv):
    srv.responder = lambda body: '{"answer": "two\nlines", "score": 1}'
    results, _ = run_all(settings_for(srv), [req(0, schema=SCHEMA)])
    assert results[0].ok and results[0].parsed == {"answer": "two\nlines", "score": 1}
    assert srv.count("chat") == 1  # no repair retry was needed


def test_invalid_output_gets_one_repair_retry(srv, transport):
    replies = iter(['{"answer": "x"}', '```json\n{"answer": "y", "score": 2}\n```'])
    srv.responder = lambda body: next(replies)
    results, stats = run_all(settings_for(srv, transport=transport), [req(0, schema=SCHEMA)])
    assert results[0].ok and results[0].parsed == {"answer": "y", "score": 2}
    assert stats.repairs == 1 and srv.count() == 2
    repair = srv.requests[1]["messages"]
    assert repair[1] == {"role": "assistant", "content": '{"answer": "x"}'}
    assert "score" in repair[2]["content"]  # the error is quoted
    # both attempts are paid for: the usage the server reported for each, summed
    assert results[0].prompt_tokens == sum(
        len(" ".join(m["content"] for m in b["messages"]).split()) for b in srv.requests
    )


def test_output_still_invalid_after_the_repair_is_recorded(srv):
    srv.responder = lambda body: "not json at all"
    results, stats = run_all(settings_for(srv), [req(0, schema=SCHEMA)])
    r = results[0]
    assert r.status == "invalid" and "not valid JSON" in r.error and "repair" in r.error
    assert r.parsed is None and srv.count() == 2


def test_truncated_structured_output_is_repaired_then_recorded_as_length(srv):
    srv.responder = lambda body: FakeReply('{"answer": "aaaa', finish_reason="length")
    results, _ = run_all(settings_for(srv), [req(0, schema=SCHEMA)])
    assert results[0].status == "length" and srv.count() == 2
    assert "cut off" in srv.requests[1]["messages"][-1]["content"]


def test_window_finds_a_server_limit_and_everything_completes(srv, transport):
    srv.max_inflight = 4
    srv.retry_after = 0.02
    srv.latency = 0.02
    s = settings_for(srv, transport=transport, max_concurrency=32, max_attempts=30)
    with open_engine(s, progress=False) as engine:
        results = list(engine.run([req(i) for i in range(200)]))
        window = engine.limiters[0].controller
    assert sorted(r.request_id for r in results) == sorted(f"r{i}" for i in range(200))
    assert all(r.ok for r in results)
    assert window.cuts >= 1 and window.window <= 8  # near the server's limit of 4
    rejected = srv.count() - 200
    assert rejected == window.refused_total
    # without the window ~28 of every 32 attempts would be refused; with it, a few per round
    assert rejected < 100, rejected


def test_budget_stops_before_the_cap_and_a_rerun_resumes(srv):
    prices = {"fake-model": {"input": 1000.0, "output": 1000.0}}  # USD per 1M tokens
    s = settings_for(srv, prices=prices, max_tokens=10, max_concurrency=2)
    requests = [req(i) for i in range(20)]
    got = []
    with pytest.raises(BudgetExceeded) as exc_info:
        with open_engine(s, progress=False) as engine:
            for r in engine.run(requests, max_cost=0.1):
                got.append(r)
    assert 0 < len(got) < 20
    assert sum(r.cost for r in got) <= 0.1
    assert "rerun with a higher --max-cost" in str(exc_info.value)
    sent = srv.count()
    assert sent == len(got)
    with open_engine(s, progress=False) as engine:
        rest = list(engine.run(requests, max_cost=10.0))
        assert engine.stats.cost > 0
    assert len(rest) == 20 and sum(r.cached for r in rest) == len(got)
    assert srv.count() == 20  # nothing sent twice


def test_under_429s_the_budget_holds_and_nothing_is_paid_twice(srv):
    """A concurrency limit of 3 and 10% sporadic 429s: retries keep their reservation, the
    cap is not passed, every answer the server served (and billed) is yielded exactly once,
    and a rerun with a higher cap pays only for the rest."""
    srv.max_inflight, srv.retry_after, srv.latency = 3, 0.02, 0.02
    srv.faults = sporadic_429(0.1, retry_after=0.02, seed=5)
    prices = {"fake-model": {"input": 1000.0, "output": 1000.0}}  # USD per 1M tokens
    s = settings_for(srv, prices=prices, max_tokens=10, max_concurrency=16, max_attempts=50)
    requests = [req(i) for i in range(40)]
    got = []
    with pytest.raises(BudgetExceeded):
        with open_engine(s, progress=False) as engine:
            got.extend(engine.run(requests, max_cost=0.12))
    assert 0 < len(got) < 40 and all(r.ok for r in got)
    assert len({r.request_id for r in got}) == len(got)
    assert sum(r.cost for r in got) <= 0.12
    assert srv.count("429") > 0  # the window met the limit (it opens at 16)
    assert srv.count() - srv.count("429") == len(got)  # served = yielded: none paid twice
    with open_engine(s, progress=False) as engine:
        rest = list(engine.run(requests, max_cost=100.0))
    assert sorted(r.request_id for r in rest) == sorted(r.id for r in requests)
    assert sum(r.cached for r in rest) == len(got)
    assert srv.count() - srv.count("429") == 40  # each request served once over both runs


def test_max_cost_needs_a_price(srv):
    with pytest.raises(ConfigError, match="price"):
        run_all(settings_for(srv), [req(0)], max_cost=1.0)


def test_requests_are_pulled_lazily(srv):
    pulled = 0

    def many():
        nonlocal pulled
        for i in range(100_000):
            pulled += 1
            yield req(i)

    with open_engine(settings_for(srv, max_concurrency=4), progress=False) as engine:
        for n, _ in enumerate(engine.run(many()), 1):
            if n == 10:
                break
    assert pulled <= 10 + 2 * 4 + 64


def test_several_endpoints_share_the_load_and_the_cache():
    with FakeOpenAIServer(latency=0.01) as a, FakeOpenAIServer(latency=0.01) as b:
        s = LLMSettings(
            endpoints=[
                {"base_url": a.base_url, "model": "fake-model", "max_concurrency": 2},
                {"base_url": b.base_url, "model": "fake-model", "max_concurrency": 2},
            ]
        )
        results, _ = run_all(s, [req(i) for i in range(40)])
        assert len(results) == 40 and all(r.ok for r in results)
        assert a.count() > 5 and b.count() > 5 and a.count() + b.count() == 40
        again, _ = run_all(s, [req(i) for i in range(40)])
        assert len(again) == 40 and all(r.cached for r in again)
        assert a.count() + b.count() == 40


def test_failover_when_one_endpoint_is_down():
    with FakeOpenAIServer() as good:
        s = LLMSettings(
            endpoints=[
                {"base_url": "http://127.0.0.1:9/v1", "model": "fake-model", "max_concurrency": 1},
                {"base_url": good.base_url, "model": "fake-model", "max_concurrency": 1},
            ],
            backoff_base_s=0.01,
            backoff_max_s=0.02,
            connect_timeout_s=1.0,
            max_attempts=10,
        )
        results, _ = run_all(s, [req(i) for i in range(6)])
        assert len(results) == 6 and all(r.ok for r in results)


def test_arun_for_async_callers(srv):
    async def main():
        async def gen():
            for i in range(10):
                yield req(i)

        with open_engine(settings_for(srv), progress=False) as engine:
            results = [r async for r in engine.arun(gen())]
            one = await engine.acomplete(req(0))
        return results, one

    results, one = asyncio.run(main())
    assert len(results) == 10 and all(r.ok for r in results) and one.cached


def test_estimate_counts_tokens_cost_and_cache_hits(srv):
    s = settings_for(
        srv, prices={"fake-model": {"input": 2.0, "output": 4.0}}, expected_output_fraction=0.5
    )
    requests = [req(i, params={"max_tokens": 100}) for i in range(10)]
    with open_engine(s, progress=False) as engine:
        e = engine.estimate(requests)
        assert (e.requests, e.cached, e.to_send) == (10, 0, 10)
        assert e.output_tokens == 500 and e.max_output_tokens == 1000
        assert e.input_tokens > 10
        assert e.cost == pytest.approx((e.input_tokens * 2 + 500 * 4) / 1e6)
        assert e.by_model["fake-model"].requests == 10
        list(engine.run(requests[:4]))
        assert engine.is_cached(requests[0]) and not engine.is_cached(requests[9])
        assert engine.estimate(requests).cached == 4
    assert srv.count() == 4


def test_failures_are_never_cached(tmp_path):
    cache = Cache(tmp_path / "c")
    entry = dict(
        key="k",
        base_url="u",
        model="m",
        text=None,
        parsed=None,
        finish_reason=None,
        prompt_tokens=0,
        completion_tokens=0,
        cost=0.0,
        latency_s=0.0,
        attempts=1,
        error="boom",
        request="{}",
        response="[]",
    )
    with pytest.raises(ValueError):
        cache.put_many([CacheEntry(status="failed", **entry)])
    assert cache.count() == 0


def test_cache_is_safe_with_concurrent_writers(tmp_path):
    errors = []

    def writer(n: int) -> None:
        try:
            # Opened concurrently on a new file: creation and migration race too.
            cache = Cache(tmp_path / "c")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
            return
        try:
            for i in range(50):
                cache.put_many(
                    [
                        CacheEntry(
                            f"{n}-{i}-{j}",
                            "u",
                            "m",
                            "ok",
                            "t",
                            None,
                            "stop",
                            1,
                            1,
                            0.0,
                            0.0,
                            1,
                            None,
                            "{}",
                            "[]",
                        )
                        for j in range(5)
                    ]
                )
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            cache.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert Cache(tmp_path / "c").count() == 4 * 50 * 5


def test_corrupt_cache_gives_a_clear_error(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    (d / "llm-cache.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(CacheError) as exc_info:
        Cache(d)
    assert "delete the cache directory" in str(exc_info.value)
    assert "llm-cache.sqlite3" in str(exc_info.value)


def test_locked_cache_gives_a_clear_error(tmp_path, monkeypatch):
    cache = Cache(tmp_path / "c")
    holder = sqlite3.connect(cache.path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        conn = cache._conn()
        conn.execute("PRAGMA busy_timeout = 50")
        with pytest.raises(CacheError, match="locked"):
            cache.put_many(
                [
                    CacheEntry(
                        "k", "u", "m", "ok", "t", None, "stop", 1, 1, 0, 0, 1, None, "{}", "[]"
                    )
                ]
            )
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_newer_cache_schema_is_refused(tmp_path):
    cache = Cache(tmp_path / "c")
    cache._conn().execute("UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    cache.close()
    with pytest.raises(CacheError, match="newer"):
        Cache(tmp_path / "c")


def test_resolve_cache_dir_order(tmp_path, monkeypatch):
    s = LLMSettings(cache_dir="from-toml")
    monkeypatch.setenv("CORPUS_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir("flag", s) == Path("flag")
    assert resolve_cache_dir(None, s) == tmp_path / "env"
    monkeypatch.delenv("CORPUS_CACHE_DIR")
    assert resolve_cache_dir(None, s, root=tmp_path) == tmp_path / "from-toml"
    assert resolve_cache_dir(None, LLMSettings()) == Path(".corpus-cache")


def test_log_progress_lines():
    out = io.StringIO()
    p = LogProgress("llm", interval_s=0.0, stream=out)
    p.start(10)
    p.update(Snapshot(done=5, cached=2, failed=1, completion_tokens=50, cost=0.5, total=10))
    p.close(Snapshot(done=10, cached=2, failed=1, completion_tokens=90, cost=0.9, total=10))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "5/10 done (2 cached, 1 failed)" in lines[0] and "$0.5000" in lines[0]


def test_the_closing_progress_line_is_not_a_repeat():
    """An update right before the close (one slow request) used to print the line twice."""
    out = io.StringIO()
    p = LogProgress("llm", interval_s=0.0, stream=out)
    p.start(1)
    snap = Snapshot(done=1, completion_tokens=9, total=1, window=1, window_reason="start")
    p.update(snap)
    p.close(snap)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "1/1 done" in lines[0] and "[window: start]" in lines[0]


def test_progress_shows_requests_served_and_queued_honestly(srv):
    srv.latency = 0.01
    out = io.StringIO()
    s = settings_for(srv, max_concurrency=1)
    with open_engine(s, progress=LogProgress("llm", interval_s=0.0, stream=out)) as engine:
        results = list(engine.run([req(i) for i in range(12)]))
    assert len(results) == 12
    found = re.findall(r"(\d+) sending, (\d+) queued, window (\d+)", out.getvalue())
    assert len(found) >= 2, out.getvalue()
    assert all(int(sending) <= 1 and window == "1" for sending, _, window in found)
    assert max(int(queued) for _, queued, _ in found) >= 2  # admitted, waiting for the slot
    assert found[-1][:2] == ("0", "0")  # the closing line: nothing left


def test_results_are_written_to_the_cache_before_they_are_yielded(srv):
    with open_engine(settings_for(srv), progress=False) as engine:
        for r in engine.run([req(i) for i in range(5)]):
            assert engine.cache.contains(r.request_sha256)


def test_breaking_out_of_a_run_keeps_finished_work(srv):
    srv.latency = 0.01
    with open_engine(settings_for(srv, max_concurrency=4), progress=False) as engine:
        for _ in engine.run([req(i) for i in range(40)]):
            break
        stored = engine.cache.count()
    assert stored >= 1
    assert stored <= 1 + 4 + 8  # what was in flight may have finished; nothing else was sent


def test_stored_response_is_the_full_body(srv, transport):
    with open_engine(settings_for(srv, transport=transport), progress=False) as engine:
        r = engine.complete(req(0))
        request, responses = engine.cache.raw(r.request_sha256)
    assert request["messages"][0]["content"] == "question 0"
    assert responses[-1]["choices"][0]["message"]["content"] == r.text
    assert responses[-1]["usage"]["completion_tokens"] == r.completion_tokens
    assert json.dumps(request).find("Authorization") < 0


def test_identical_requests_in_one_run_are_sent_once(srv):
    srv.latency = 0.05
    same = [
        ChatRequest(id=f"copy{i}", messages=({"role": "user", "content": "hi"},)) for i in range(3)
    ]
    results, stats = run_all(settings_for(srv), [*same, req(1)])
    assert sorted(r.request_id for r in results) == ["copy0", "copy1", "copy2", "r1"]
    assert all(r.ok for r in results) and srv.count() == 2
    assert len({r.text for r in results if r.request_id.startswith("copy")}) == 1
    assert sum(r.cached for r in results) == 2 and stats.cached == 2


def test_the_progress_bar_says_why_the_window_moved(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # a wide terminal: rich crops the line to its width
    bar = BarProgress("llm")
    bar.start(10)
    reason = "cut 16 -> 4: 12 of 16 answers were 429"
    snap = Snapshot(done=3, total=10, window=4, refused_last_minute=12, window_reason=reason)
    bar.close(snap)
    err = " ".join(capsys.readouterr().err.split())
    assert "window 4" in err and "429s/min 12" in err
    assert "(cut 16 -> 4: 12 of 16 answers were 429)" in err, err
