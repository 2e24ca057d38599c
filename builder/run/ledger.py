"""What a run costs: the ledger over every build into a run, and the metered LLM that counts
and caps one build's spend across all its stages."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.errors import BudgetExceeded
from builder.records import ChatRequest, ChatResult

if TYPE_CHECKING:  # pragma: no cover
    from builder.llm.base import LLM

#: Seconds between ledger writes while requests complete (bounds what kill -9 forgets).
LEDGER_FLUSH_S = 2.0


@dataclass
class Ledger:
    """What a run directory has cost over every build into it (``work/ledger.json``)."""

    cost_usd: float = 0.0
    requests_sent: int = 0
    requests_cached: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    builds: int = 0

    @classmethod
    def load(cls, path: Path) -> Ledger:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        if not isinstance(data, dict):
            return cls()
        return cls(
            cost_usd=float(data.get("cost_usd") or 0.0),
            requests_sent=int(data.get("requests_sent") or 0),
            requests_cached=int(data.get("requests_cached") or 0),
            stage_seconds={str(k): float(v) for k, v in (data.get("stage_seconds") or {}).items()},
            builds=int(data.get("builds") or 0),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "cost_usd": round(self.cost_usd, 6),
            "requests_sent": self.requests_sent,
            "requests_cached": self.requests_cached,
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "builds": self.builds,
        }


class MeteredLLM:
    """An ``LLM`` wrapper that counts what a build sends and caps its total spend.

    Every stage of one build (syllabi, generation, second samples) talks to the model through
    one ``MeteredLLM``, so ``sent`` (requests answered by the model now, not by the cache),
    ``cached`` and ``cost`` cover the whole build, and ``max_cost`` caps all of it together.
    """

    def __init__(
        self,
        inner: LLM,
        max_cost: float | None = None,
        on_progress: Callable[[], None] | None = None,
    ) -> None:
        self.inner = inner
        self.max_cost = max_cost
        self.sent = 0
        self.cached = 0
        self.cost = 0.0
        self._on_progress = on_progress
        self._last_flush = time.monotonic()
        self._root: MeteredLLM | None = None

    def share(self, inner: LLM) -> MeteredLLM:
        """This meter and cap in front of another engine (the judge's own endpoint): its
        requests, cache hits and spend count in this build's totals and ``--max-cost``."""
        other = MeteredLLM(inner, on_progress=self._on_progress)
        other._root = self._root or self
        return other

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    def request_sha256(self, request: ChatRequest) -> str:
        return self.inner.request_sha256(request)

    def remaining(self) -> float | None:
        """USD this build may still spend (None: no cap)."""
        if self._root is not None:
            return self._root.remaining()
        if self.max_cost is None:
            return None
        return max(0.0, self.max_cost - self.cost)

    def _count(self, result: ChatResult) -> None:
        if result.status == "skipped":
            return
        for meter in (self, self._root) if self._root is not None else (self,):
            if result.cached:
                meter.cached += 1
            else:
                meter.sent += 1
                meter.cost += result.cost or 0.0
        now = time.monotonic()
        if self._on_progress is not None and now - self._last_flush >= LEDGER_FLUSH_S:
            self._last_flush = now
            self._on_progress()

    def run(
        self, requests: Iterable[ChatRequest], *, max_cost: float | None = None
    ) -> Iterator[ChatResult]:
        caps = [c for c in (max_cost, self.remaining()) if c is not None]
        for result in self.inner.run(requests, max_cost=min(caps) if caps else None):
            self._count(result)
            yield result

    def complete(self, request: ChatRequest) -> ChatResult:
        results = list(self.run([request]))
        return results[0]


@contextlib.contextmanager
def budget_message(meter: Callable[[], MeteredLLM | None], cap: float | None) -> Iterator[None]:
    """Restate the engine's budget stop in terms of the whole build's --max-cost."""
    try:
        yield
    except BudgetExceeded as exc:
        m = meter()
        if m is None or cap is None:
            raise
        unsent = re.search(r"(\d+) request\(s\) not sent", str(exc))
        raise BudgetExceeded(
            f"--max-cost ${cap:g} reached: this build spent ${m.cost:.4f} on {m.sent} "
            f"request(s)" + (f"; {unsent.group(1)} request(s) not sent" if unsent else ""),
            hint="rerun with a higher --max-cost (or none) to continue; finished work is kept "
            "and cached answers cost nothing",
        ) from None
