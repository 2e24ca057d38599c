"""Atomic file writes for the taxonomy tools (kept importable here; the one implementation
lives in ``builder.util.files``)."""

from __future__ import annotations

from builder.util.files import atomic_write_text

__all__ = ["atomic_write_text"]
