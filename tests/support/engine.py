"""The real engine (``open_engine``) pointed at the loopback fake OpenAI server, for tests
that involve the model: cache keys, schema checks, repair retries and budgets all run.

    with FakeOpenAIServer(responder=json_reply(lambda body: {...})) as srv:
        with fake_engine(srv, tmp_path) as llm:
            report = generate_syllabi(tax, llm, ...)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.fake_openai_server import FakeOpenAIServer

__all__ = ["config_for", "fake_engine", "is_repair", "json_reply", "prompt_of"]


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


def user_request(rid: str, content: str) -> Any:
    """A one-message chat request with id ``rid``."""
    from builder.records import ChatRequest

    return ChatRequest(id=rid, messages=({"role": "user", "content": content},))
