"""Where a document came from: the exact messages sent for it.

A document row keeps ``request_sha256``, the LLM cache key of its request, and the cache
(outside the run, shared by every build) stores the request body as it was sent. That is
the first source: byte for byte what the endpoint received, with every sampling parameter.
When the cache no longer has it (deleted, or another machine built the run), the request
is re-rendered from the run's walk (``work/walk/part-*.parquet``) and the current templates, as
``corpus generate`` would build it; the page says which source it shows, and that a
re-rendered prompt reflects today's templates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from builder.errors import BuilderError

__all__ = ["Provenance", "find_provenance"]


@dataclass
class Provenance:
    """The messages of a document's request and where they were found."""

    source: str  # "cache" | "re-rendered" | "unavailable"
    messages: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def _from_cache(cache_dir: Path | None, key: str) -> Provenance | None:
    from builder.llm.cache import CACHE_FILE, Cache

    if cache_dir is None or not (cache_dir / CACHE_FILE).exists():
        return None
    cache = Cache(cache_dir)
    try:
        raw = cache.raw(key)
    finally:
        cache.close()
    if raw is None:
        return None
    request, _response = raw
    messages = list(request.get("messages") or [])
    params = {k: v for k, v in request.items() if k != "messages"}
    return Provenance("cache", messages, params, f"LLM cache {cache_dir}, key {key}")


def _unit(run_dir: Path, unit_id: str) -> dict[str, Any] | None:
    """The unit's row in the walk's unit partitions (``work/walk/part-*.parquet``), read with
    a pushed-down filter so only the matching row group is decoded."""
    from builder.util.partitions import list_parts

    parts = list_parts(run_dir / "work" / "walk")
    if not parts:
        return None
    found = pl.scan_parquet(parts).filter(pl.col("unit_id") == unit_id).head(1).collect().to_dicts()
    return found[0] if found else None


def _re_rendered(row: dict[str, Any], run_dir: Path, config: Any) -> Provenance | None:
    from builder.generate import plan_requests
    from builder.records import Unit
    from builder.templates import load_templates

    unit_id, request_id = row.get("unit_id"), row.get("request_id")
    if config is None or not unit_id or not request_id:
        return None
    unit = _unit(run_dir, unit_id)
    if unit is None:
        return None
    templates = load_templates(config.path(config.generate.templates_dir))
    for request in plan_requests([Unit.from_dict(unit)], templates, config.generate):
        if request.id == request_id:
            return Provenance(
                "re-rendered",
                [dict(m) for m in request.messages],
                dict(request.params),
                "re-rendered from the run's walk (work/walk/) and today's templates "
                "(not in the LLM cache)",
            )
    return None


def find_provenance(
    row: dict[str, Any], run_dir: Path, cache_dir: Path | None, config: Any = None
) -> Provenance:
    """The messages sent for ``row``: from the LLM cache, else re-rendered, else why not."""
    key = row.get("request_sha256")
    try:
        if key:
            found = _from_cache(cache_dir, key)
            if found is not None:
                return found
        found = _re_rendered(row, run_dir, config)
        if found is not None:
            return found
    except BuilderError as exc:
        return Provenance("unavailable", note=str(exc))
    return Provenance(
        "unavailable",
        note=(
            f"request {key or '?'} is not in the LLM cache ({cache_dir}) and cannot be "
            "re-rendered (a transformed document, or the unit is no longer in the walk)"
        ),
    )
