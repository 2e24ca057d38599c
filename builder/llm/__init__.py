"""The LLM engine: cached, retried, budget-capped chat completions (see ``base.LLM``).

    from builder.llm import open_engine
    with open_engine(cfg.llm) as llm:          # embedded SmolLM2 unless [llm] names an endpoint
        for result in llm.run(requests, max_cost=5.0):
            ...

Modules: ``engine`` (Engine, open_engine, the run loop), ``endpoint`` (what is sent, cache
keys), ``transport`` (raw aiohttp, the default) and ``transport_openai`` (through the openai
client), ``control`` (endpoint limiter, backoff), ``window`` (the concurrency window and
rate-limit pacing), ``cache`` (SQLite), ``budget`` (prices, tokens), ``schema`` (structured
output), ``embedded`` (llama.cpp server), ``progress``, ``batch`` (Batch API mode),
``jobfile`` (``corpus llm run``), ``check``.
Names are imported lazily so ``import builder.llm`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "LLM": "builder.llm.base",
    "open_engine": "builder.llm.engine",
    "Engine": "builder.llm.engine",
    "EngineStats": "builder.llm.core",
    "Estimate": "builder.llm.engine",
    "ModelEstimate": "builder.llm.engine",
    "resolve_cache_dir": "builder.llm.engine",
    "Cache": "builder.llm.cache",
    "schema_for": "builder.llm.schema",
    "strict_schema": "builder.llm.schema",
    "parse_as": "builder.llm.schema",
    "count_tokens": "builder.llm.budget",
    "prompt_tokens": "builder.llm.budget",
    "run_jobfile": "builder.llm.jobfile",
    "check_endpoints": "builder.llm.check",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'builder.llm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
