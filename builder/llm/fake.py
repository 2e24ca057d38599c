"""An in-process fake ``LLM`` for tests (in the spirit of simonw/llm's MockModel).

It answers from a queue of canned replies or from a function of the request, records every
request it saw, and returns the same ``ChatResult`` records as the real engine.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from builder.records import ChatRequest, ChatResult, canonical_json, sha256_hex

Reply = str | dict[str, Any] | ChatResult
Responder = Callable[[ChatRequest], Reply]


class ScriptedLLM:
    """Replies from ``replies`` (a list used in order, or a function of the request).

    A ``str`` reply is returned as text; a ``dict`` reply is JSON-encoded (handy for schema
    requests); a ``ChatResult`` is returned as is (to script failures or truncation).
    """

    def __init__(self, replies: Iterable[Reply] | Responder, model_name: str = "scripted") -> None:
        self.model_name = model_name
        self._fn: Responder | None = replies if callable(replies) else None
        self._queue: deque[Reply] = deque() if callable(replies) else deque(replies)
        self.calls: list[ChatRequest] = []

    def request_sha256(self, request: ChatRequest) -> str:
        return sha256_hex(
            {
                "model": self.model_name,
                "messages": list(request.messages),
                "params": request.params,
                "schema": request.schema,
                "sample_index": request.sample_index,
            }
        )

    def complete(self, request: ChatRequest) -> ChatResult:
        self.calls.append(request)
        if self._fn is not None:
            reply = self._fn(request)
        elif self._queue:
            reply = self._queue.popleft()
        else:
            raise AssertionError(f"ScriptedLLM ran out of replies at request {request.id}")
        if isinstance(reply, ChatResult):
            return reply
        text = reply if isinstance(reply, str) else canonical_json(reply)
        parsed = None
        status = "ok"
        if request.schema is not None:
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                status = "invalid"
        return ChatResult(
            request_id=request.id,
            status=status,
            text=text,
            parsed=parsed,
            finish_reason="stop",
            model=self.model_name,
            endpoint="scripted",
            prompt_tokens=sum(len(m["content"].split()) for m in request.messages),
            completion_tokens=len(text.split()),
            request_sha256=self.request_sha256(request),
            metadata=dict(request.metadata),
            error=None if status == "ok" else "reply is not valid JSON",
        )

    def run(
        self, requests: Iterable[ChatRequest], *, max_cost: float | None = None
    ) -> Iterator[ChatResult]:
        for request in requests:
            yield self.complete(request)
