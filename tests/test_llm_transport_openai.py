"""The transport choice: ``[llm] transport = "openai" | "azure"`` (through the openai client)
next to the default aiohttp one. The engine's fault-injection tests in test_llm_engine.py run on
both transports; these cover what differs: headers, keys, Azure, per-endpoint choice, the
shared cache, ``corpus llm check``, Batch API mode and async callers."""

from __future__ import annotations

import asyncio
import typing

import pytest
from aiohttp import web
from pydantic import ValidationError

from builder.errors import ConfigError
from builder.llm import open_engine
from builder.llm.check import check_endpoints
from builder.llm.endpoint import endpoints_from_settings
from builder.llm.transport import Transport
from builder.llm.transport_http import HttpTransport
from builder.llm.transport_openai import AzureOpenAITransport, OpenAITransport
from builder.llm.transports import TRANSPORTS, make_transport
from builder.records import ChatRequest
from builder.settings.llm import LLMSettings, TransportName
from tests.support.fake_openai_server import FakeOpenAIServer


def req(i: int, **kw) -> ChatRequest:
    return ChatRequest(id=f"r{i}", messages=({"role": "user", "content": f"question {i}"},), **kw)


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
        max_concurrency=4,
        transport="openai",
    )
    base.update(kw)
    return LLMSettings(**base)


def run_all(settings: LLMSettings, requests):
    with open_engine(settings, progress=False) as engine:
        return list(engine.run(requests)), engine.stats


class QueryRecordingServer(FakeOpenAIServer):
    """The fake server, also recording each chat request's query string."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.queries: list[dict[str, str]] = []

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.queries.append(dict(request.query))
        return await super()._chat(request)


@pytest.fixture
def srv():
    with FakeOpenAIServer() as server:
        yield server


def test_registry_covers_every_configurable_transport():
    assert set(TRANSPORTS) == set(typing.get_args(TransportName))
    ep = endpoints_from_settings(LLMSettings(base_url="http://127.0.0.1:1/v1", model="m"))[0]
    assert ep.transport == "http" and isinstance(make_transport(ep, LLMSettings()), HttpTransport)
    ep.transport = "aiohttp"
    made = make_transport(ep, LLMSettings())
    assert isinstance(made, Transport) and not isinstance(made, HttpTransport)
    ep.transport = "openai"
    assert isinstance(make_transport(ep, LLMSettings()), OpenAITransport)


def test_openai_transport_really_goes_through_the_sdk(srv):
    results, stats = run_all(settings_for(srv), [req(i) for i in range(5)])
    assert all(r.ok for r in results) and stats.http_requests == 5
    assert {h["User-Agent"].split("/")[0] for h in srv.headers} == {"AsyncOpenAI"}
    assert all(h["x-stainless-retry-count"] == "0" for h in srv.headers)  # engine retries


def test_no_key_means_no_authorization_header_and_sdk_env_keys_are_ignored(srv, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env-SECRET-0123456789")
    results, _ = run_all(settings_for(srv), [req(0)])
    assert results[0].ok
    assert "Authorization" not in srv.headers[0]  # only api_key_env supplies a key


def test_default_headers_are_sent_by_every_transport(srv):
    headers = {"OpenAI-Organization": "org-test", "X-Team": "curriculum"}
    for i, transport in enumerate(("http", "aiohttp", "openai")):
        srv.reset_counts()
        run_all(settings_for(srv, transport=transport, default_headers=headers), [req(i)])
        sent = {k.lower(): v for k, v in srv.headers[0].items()}  # names are case-insensitive
        assert (sent["openai-organization"], sent["x-team"]) == ("org-test", "curriculum")
        assert sent["content-type"] == "application/json"


@pytest.mark.parametrize("first_transport", ["http", "aiohttp"])
def test_the_cache_does_not_depend_on_the_transport(srv, first_transport):
    requests = [req(i) for i in range(6)]
    first, _ = run_all(settings_for(srv, transport=first_transport), requests)
    second, stats = run_all(settings_for(srv, transport="openai"), requests)
    assert srv.count() == 6 and stats.http_requests == 0 and all(r.cached for r in second)
    assert {r.request_sha256 for r in first} == {r.request_sha256 for r in second}


def test_each_endpoint_may_choose_its_transport():
    with FakeOpenAIServer() as a, FakeOpenAIServer() as b:
        s = LLMSettings(
            transport="openai",
            endpoints=[
                {"base_url": a.base_url, "model": "fake-model", "max_concurrency": 2},
                {
                    "base_url": b.base_url,
                    "model": "fake-model",
                    "max_concurrency": 2,
                    "transport": "aiohttp",
                    "default_headers": {"X-Replica": "b"},
                },
            ],
        )
        results, _ = run_all(s, [req(i) for i in range(30)])
        assert all(r.ok for r in results) and a.count() + b.count() == 30
        assert a.count() > 0 and b.count() > 0
        assert all(h["User-Agent"].startswith("AsyncOpenAI") for h in a.headers)
        assert all(h["User-Agent"].startswith("curriculum-corpus-builder") for h in b.headers)
        assert all(h["X-Replica"] == "b" for h in b.headers)
        assert not any("x-replica" in map(str.lower, h) for h in a.headers)


def test_unreachable_endpoint_is_retried_then_recorded():
    s = LLMSettings(
        base_url="http://127.0.0.1:9/v1",
        model="fake-model",
        transport="openai",
        max_attempts=2,
        backoff_base_s=0.01,
        backoff_max_s=0.02,
        connect_timeout_s=1.0,
    )
    results, stats = run_all(s, [req(0)])
    assert results[0].status == "failed" and stats.retries == 1
    assert "cannot connect to http://127.0.0.1:9/v1" in results[0].error


def test_azure_transport_sends_api_key_header_and_api_version(monkeypatch):
    key = "azure-key-SECRET-0123456789"
    monkeypatch.setenv("AZ_KEY", key)
    monkeypatch.setenv("AZURE_OPENAI_AD_TOKEN", "token-from-env-SECRET")  # must not be used
    with QueryRecordingServer() as srv:
        s = settings_for(srv, transport="azure", api_key_env="AZ_KEY", api_version="2024-10-21")
        results, _ = run_all(s, [req(0), req(1, schema={"type": "object"})])
        assert all(r.ok for r in results)
        assert {q["api-version"] for q in srv.queries} == {"2024-10-21"}
        assert all(h["api-key"] == key and "Authorization" not in h for h in srv.headers)


def test_azure_transport_needs_api_version_and_a_key(srv):
    with pytest.raises(ValidationError, match="api_version"):
        settings_for(srv, transport="azure")
    with pytest.raises(ValidationError, match="api_version"):
        LLMSettings(endpoints=[{"base_url": srv.base_url, "model": "m", "transport": "azure"}])
    with pytest.raises(ConfigError, match="needs an API key"):
        with open_engine(
            settings_for(srv, transport="azure", api_version="v"), progress=False
        ) as e:
            e.complete(req(0))
    ep = endpoints_from_settings(settings_for(srv, transport="azure", api_version="v"))[0]
    with pytest.raises(ConfigError):
        AzureOpenAITransport(ep, LLMSettings())


def test_llm_check_goes_through_the_sdk(srv):
    with open_engine(settings_for(srv), progress=False) as engine:
        [status] = check_endpoints(engine, chat=True)
    assert status.ok and status.model_listed and status.chat_latency_ms is not None
    assert srv.count("models") == 1 and srv.headers[0]["User-Agent"].startswith("AsyncOpenAI")


def test_llm_check_reports_auth_failure(srv):
    srv.api_key = "sk-right-0123456789abcdef"
    with open_engine(settings_for(srv), progress=False) as engine:
        [status] = check_endpoints(engine)
    assert not status.ok and "rejected the credentials" in status.error


def test_batch_mode_works_with_the_openai_transport(srv):
    s = settings_for(srv, batch=True, batch_poll_s=0.02)
    results, _ = run_all(s, [req(i) for i in range(4)])
    assert len(results) == 4 and all(r.ok for r in results)
    assert srv.count("files") == 1 and srv.count("batches") == 1 and srv.count("chat") == 0
    batch_calls = [h for h in srv.headers if "multipart" not in h.get("Content-Type", "")]
    assert any(h["User-Agent"].startswith("AsyncOpenAI") for h in batch_calls)


def test_arun_with_the_openai_transport(srv):
    async def main():
        with open_engine(settings_for(srv, stream=True), progress=False) as engine:
            return [r async for r in engine.arun([req(i) for i in range(6)])]

    results = asyncio.run(main())
    assert len(results) == 6 and all(r.ok for r in results)
    assert all(b["stream"] is True for b in srv.requests)
