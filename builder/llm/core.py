"""What the engine's workers share with it: its counters and the parts they read.

``Dispatch`` (the worker tasks) and ``Driver`` (one run's feeding and draining) are given
the ``Engine`` that owns them; they type it as ``EngineCore``, the few attributes they use,
so that they need not import ``builder.llm.engine``, which imports them (no import cycle,
not even for type checking).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from builder.llm.budget import Price
from builder.llm.cache import Cache
from builder.llm.control import EndpointLimiter
from builder.llm.endpoint import Endpoint
from builder.llm.progress import Progress
from builder.settings.llm import LLMSettings


@dataclass
class EngineStats:
    """Counters over an engine's lifetime (all runs)."""

    results: int = 0  # yielded, any status
    cached: int = 0
    ok: int = 0
    length: int = 0
    invalid: int = 0
    failed: int = 0
    http_requests: int = 0  # chat-completion attempts sent
    retries: int = 0
    repairs: int = 0
    prompt_tokens: int = 0  # of results produced now (not cache hits)
    completion_tokens: int = 0
    cost: float = 0.0  # USD spent now

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class EngineCore(Protocol):
    """The engine as its workers see it (``builder.llm.engine.Engine`` satisfies it)."""

    settings: LLMSettings
    cache: Cache
    endpoints: list[Endpoint]
    limiters: list[EndpointLimiter]
    prices: list[Price | None]
    stats: EngineStats

    @property
    def model_name(self) -> str: ...

    def new_progress(self) -> Progress:
        """A progress reporter for one run, as the engine was opened with."""
        ...
