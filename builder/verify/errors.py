"""The verification sandbox's own error (not a verdict on a document)."""

from __future__ import annotations

from builder.errors import BuilderError


class SandboxError(BuilderError):
    """The sandbox itself could not run (not a verdict on the document)."""
