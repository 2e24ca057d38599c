"""Prices, token estimates and the ``--max-cost`` budget.

Prices come from ``[llm] prices`` (USD per 1M tokens, by model name); the embedded model is
free. Running cost is computed from the usage each response reports.

The budget is a reservation scheme: before a request is launched, its worst case (estimated
prompt tokens + ``max_tokens``, twice over for schema requests, which may take a repair
retry) is reserved; when the response arrives the reservation is replaced by the real cost.
A request is launched only if spent + reserved + its worst case stays within the cap, so the
cap is never passed; when nothing is in flight and the next request still does not fit, the
run stops cleanly (``BudgetExceeded``) and a rerun with a higher cap resumes from the cache.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from builder.errors import ConfigError
from builder.settings.llm import LLMSettings, PriceSettings

# Prompt estimates use cl100k; other tokenizers (Llama, Mistral) produce up to ~20% more
# tokens for the same text, so reservations scale the count up.
PROMPT_SAFETY = 1.25
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REPLY = 3


def count_tokens(text: str) -> int:
    """cl100k token count of ``text`` (offline; the one counter in ``builder.tokens``)."""
    from builder.tokens import count_tokens_one

    return count_tokens_one(text)


def prompt_tokens(messages: Any) -> int:
    """Estimated prompt tokens of a chat (content plus per-message overhead)."""
    total = TOKENS_PER_REPLY
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            total += count_tokens(content)
        elif isinstance(content, list):  # content parts
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += count_tokens(part["text"])
        total += TOKENS_PER_MESSAGE
    return total


def max_output_tokens(body: dict[str, Any]) -> int:
    return int(body.get("max_completion_tokens") or body.get("max_tokens") or 0)


@dataclass(frozen=True)
class Price:
    """USD per 1M tokens."""

    input: float
    output: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1e6


FREE = Price(0.0, 0.0)


def price_for(
    settings: LLMSettings, model: str, *, embedded: bool = False, batch: bool = False
) -> Price | None:
    """The price of ``model`` (None when the table has no entry; the embedded model is free)."""
    if embedded:
        return FREE
    p: PriceSettings | None = settings.prices.get(model)
    if p is None:
        return None
    if batch:
        return Price(
            p.batch_input if p.batch_input is not None else p.input / 2,
            p.batch_output if p.batch_output is not None else p.output / 2,
        )
    return Price(p.input, p.output)


def require_price(
    settings: LLMSettings, model: str, *, embedded: bool = False, batch: bool = False
) -> Price:
    """Like ``price_for`` but a missing price is a ``ConfigError`` (a budget needs prices)."""
    p = price_for(settings, model, embedded=embedded, batch=batch)
    if p is None:
        raise ConfigError(
            f"--max-cost needs a price for model {model!r}, and [llm] prices has none",
            hint=f'add to corpus.toml: [llm.prices."{model}"] input = USD_PER_1M, '
            "output = USD_PER_1M",
        )
    return p


@dataclass
class Budget:
    """Running spend against an optional cap. Not thread-safe: the run's driver owns it."""

    max_cost: float | None
    spent: float = 0.0
    reserved: float = 0.0
    stopped: int = 0  # requests not launched because of the cap
    _held: dict[Hashable, float] = field(default_factory=dict)

    def fits(self, worst_case: float) -> bool:
        return self.max_cost is None or self.spent + self.reserved + worst_case <= self.max_cost

    def reserve(self, token: Hashable, worst_case: float) -> None:
        self._held[token] = worst_case
        self.reserved += worst_case

    def settle(self, token: Hashable, actual: float) -> None:
        self.reserved -= self._held.pop(token, 0.0)
        if not self._held:
            self.reserved = 0.0  # no float drift once nothing is in flight
        self.spent += actual

    @property
    def in_flight(self) -> int:
        return len(self._held)
