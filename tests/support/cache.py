"""LLM cache entries for tests of ``builder.llm.cache``."""

from __future__ import annotations

from builder.llm.cache import CacheEntry


def cache_entry(i: int, text: str | None = None) -> CacheEntry:
    """A cacheable outcome numbered ``i``: key ``k0007``, ~3 KB of text unless ``text`` is
    given (more than a 4 KB page holds with its bodies), parsed output on odd numbers."""
    return CacheEntry(
        key=f"k{i:04d}",
        base_url="http://127.0.0.1:1/v1",
        model="m",
        status="ok",
        text=text if text is not None else f"answer {i} " * 300,
        parsed={"n": i} if i % 2 else None,
        finish_reason="stop",
        prompt_tokens=i,
        completion_tokens=2 * i,
        cost=0.001 * i,
        latency_s=0.5,
        attempts=1,
        error=None,
        request=f'{{"n":{i}}}',
        response=f'[{{"id":"r{i}"}}]',
    )
