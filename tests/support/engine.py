"""The real engine (``open_engine``) pointed at the loopback fake OpenAI server, for tests
that involve the model: cache keys, schema checks, repair retries and budgets all run.

    with FakeOpenAIServer(responder=json_reply(lambda body: {...})) as srv:
        with fake_engine(srv, tmp_path) as llm:
            report = generate_syllabi(tax, llm, ...)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.fake_openai_server import FakeOpenAIServer

__all__ = [
    "config_for",
    "fake_engine",
    "fake_settings",
    "is_repair",
    "json_reply",
    "prompt_of",
    "run_engine_killed",
    "user_request",
]


@contextmanager
def fake_engine(server: FakeOpenAIServer, tmp_path: Path, **settings: Any) -> Iterator[Any]:
    """``open_engine`` on ``server`` with its cache under ``tmp_path`` (progress off)."""
    from builder.llm import open_engine
    from builder.settings.llm import LLMSettings

    llm_settings = LLMSettings(base_url=server.base_url, model=server.model, **settings)
    with open_engine(llm_settings, cache_dir=tmp_path / "llm-cache", progress=False) as llm:
        yield llm


def prompt_of(body: dict[str, Any]) -> str:
    """The first user message of a chat request body (the prompt, also in a repair retry)."""
    return next(m["content"] for m in body["messages"] if m["role"] == "user")


def is_repair(body: dict[str, Any]) -> bool:
    """True for the engine's repair retry (the bad reply and a correction request appended)."""
    return any(m["role"] == "assistant" for m in body["messages"])


def json_reply(fn: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], str]:
    """A responder that JSON-encodes what ``fn(body)`` returns (a str is sent as is)."""

    def respond(body: dict[str, Any]) -> str:
        value = fn(body)
        return value if isinstance(value, str) else json.dumps(value)

    return respond


def config_for(server: FakeOpenAIServer, path: Path, extra: str = "") -> Path:
    """A corpus.toml at ``path`` whose [llm] is ``server``; ``extra`` is appended."""
    path.write_text(
        f'[llm]\nbase_url = "{server.base_url}"\nmodel = "{server.model}"\n{extra}',
        encoding="utf-8",
    )
    return path


def fake_settings(srv: FakeOpenAIServer, concurrency: int, **kw: Any) -> Any:
    """``LLMSettings`` for the fake server: fast backoff, ``concurrency`` requests at once."""
    from builder.settings.llm import LLMSettings

    base: dict[str, Any] = dict(
        base_url=srv.base_url,
        model="fake-model",
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        max_concurrency=concurrency,
    )
    base.update(kw)
    return LLMSettings(**base)


#: Headers a rerun sends (``fake_settings(..., default_headers=RERUN_HEADERS)``), so that
#: the fake server's record tells its requests from those of the run before it.
RERUN_HEADERS = {"X-Test-Rerun": "1"}


def assert_only_uncommitted_resent(
    srv: FakeOpenAIServer, requests: list[Any], cached: set[str]
) -> None:
    """After a run stopped (killed, or its caller gone) and a rerun of ``requests`` sent with
    ``RERUN_HEADERS``: the rerun sent every request it did not take from the cache
    (``cached`` ids) exactly once, and none of the others. Counted per request from the
    server's record (``srv`` made with ``record=True``), by the rerun's header, not as a
    difference of totals: requests the stopped process had written may reach the server's
    handlers after the rerun began (on a loaded machine, seconds later)."""
    mark = {k.lower(): v for k, v in RERUN_HEADERS.items()}
    rerun = Counter(
        body["messages"][0]["content"]
        for body, headers in zip(srv.requests, srv.chat_headers, strict=True)
        if all({k.lower(): v for k, v in headers.items()}.get(k) == v for k, v in mark.items())
    )
    for request in requests:
        times = rerun[request.messages[0]["content"]]
        if request.id in cached:
            assert times == 0, f"{request.id}: committed, yet sent again {times} times"
        else:
            assert times == 1, f"{request.id}: sent {times} times by the rerun"
    assert sum(rerun.values()) == len(requests) - len(cached)


def user_request(rid: str, content: str) -> Any:
    """A one-message chat request with id ``rid``."""
    from builder.records import ChatRequest

    return ChatRequest(id=rid, messages=({"role": "user", "content": content},))


#: A process running ``argv[3]`` one-message requests through ``open_engine`` (at most
#: ``argv[4]`` in flight) against ``argv[1]`` with its cache in ``argv[2]``, printing each
#: result's id as it gets it (the caller's journal): what ``run_engine_killed`` starts.
_KILLED_RUN = r"""
import sys
from builder.llm import open_engine
from builder.records import ChatRequest
from builder.settings.llm import LLMSettings
s = LLMSettings(base_url=sys.argv[1], model="fake-model", max_concurrency=int(sys.argv[4]))
reqs = [ChatRequest(id=f"r{i}", messages=({"role": "user", "content": f"q{i}"},))
        for i in range(int(sys.argv[3]))]
with open_engine(s, cache_dir=sys.argv[2], progress=False) as engine:
    for r in engine.run(reqs):
        print(r.request_id, flush=True)
"""


def run_engine_killed(
    srv: FakeOpenAIServer, cache_dir: Path, n: int, *, fault: str, concurrency: int
) -> subprocess.CompletedProcess[str]:
    """Requests ``r0``.. ``r{n-1}`` (content ``q<i>``) run through the engine in another
    process with the fault point ``fault`` (``name:count``, ``CORPUS_FAULT``) armed; its
    stdout holds the ids of the results the caller got before it stopped."""
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORPUS_")}
    env["CORPUS_FAULT"] = fault
    env["PYTHONPATH"] = str(root)
    argv = [sys.executable, "-c", _KILLED_RUN, srv.base_url, str(cache_dir), str(n)]
    return subprocess.run(
        [*argv, str(concurrency)], env=env, capture_output=True, text=True, timeout=120
    )
