"""``corpus llm check``: does each configured endpoint answer, how fast, with which models.

It asks ``GET /models`` (and, with ``chat=True``, one tiny uncached chat completion) of every
endpoint, starting the embedded server if it is configured. Nothing is cached and no key is
shown.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from builder.errors import BuilderError
from builder.llm.transport import AttemptError


@dataclass
class EndpointStatus:
    """The answer of one endpoint."""

    endpoint: str
    model: str
    ok: bool
    latency_ms: float | None = None
    models: list[str] = field(default_factory=list)
    model_listed: bool | None = None
    chat_latency_ms: float | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


async def _probe(transport: Any, ep: Any, chat: bool) -> EndpointStatus:
    status = EndpointStatus(endpoint=ep.label, model=ep.model, ok=False)
    t0 = time.perf_counter()
    try:
        data = await transport.request_json("GET", "models")
    except AttemptError as err:
        status.error = ep.redact(err.reason)
        return status
    status.latency_ms = (time.perf_counter() - t0) * 1000
    entries = data.get("data") if isinstance(data, dict) else None
    status.models = sorted(
        str(m.get("id")) for m in entries or [] if isinstance(m, dict) and m.get("id")
    )
    status.model_listed = ep.embedded or ep.model in status.models
    status.ok = True
    if chat:
        body = {
            "model": ep.model,
            "messages": [{"role": "user", "content": "Say OK."}],
            "max_tokens": 1,
            "temperature": 0,
        }
        t0 = time.perf_counter()
        try:
            await transport.chat(json.dumps(body).encode())
        except AttemptError as err:
            status.ok = False
            status.error = f"chat completion failed: {ep.redact(err.reason)}"
            return status
        status.chat_latency_ms = (time.perf_counter() - t0) * 1000
    return status


def check_endpoints(engine: Any, *, chat: bool = False) -> list[EndpointStatus]:
    """Probe every endpoint of ``engine`` (in order); never raises for an endpoint's failure."""
    results = []
    for i, ep in enumerate(engine.endpoints):
        if ep.embedded:
            try:
                engine.ensure_started()
            except BuilderError as exc:
                results.append(EndpointStatus(ep.label, ep.model, False, error=str(exc)))
                continue
        io, transports = engine.io_thread()
        results.append(io.call(_probe(transports[i], ep, chat)))
    return results
