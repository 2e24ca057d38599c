"""The narrow interface every generating stage uses to talk to a model.

Stages depend on ``LLM`` only: a run injects the engine (``builder.llm.open_engine``), a
programmer may inject anything with the same methods. Results come back as they
complete, in any order; each ``ChatResult.request_id`` names its ``ChatRequest``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, runtime_checkable

from builder.records import ChatRequest, ChatResult


@runtime_checkable
class LLM(Protocol):
    """Anything that turns chat requests into results."""

    #: name recorded as ``model`` in provenance
    model_name: str

    def run(
        self, requests: Iterable[ChatRequest], *, max_cost: float | None = None
    ) -> Iterator[ChatResult]:
        """Yield one result per request as each completes (cache hits first, cheapest)."""
        ...

    def complete(self, request: ChatRequest) -> ChatResult:
        """Run one request and return its result."""
        ...

    def request_sha256(self, request: ChatRequest) -> str:
        """The cache key of a request: sha256 of everything that is sent."""
        ...
