"""What the review app and its handlers share: its settings, the checked form, the page context.

Kept apart from ``app`` (which builds the application from ``routes``) so that the handlers
do not import the module that imports them.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request

__all__ = ["LOOPBACK_HOSTS", "ReviewSettings", "checked_form", "page_context"]

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
#: Form fields accepted in one POST (ticking every row of a long flags page).
MAX_FORM_FIELDS = 100_000


@dataclass
class ReviewSettings:
    """What one review app serves and how it guards it.

    ``config`` (a ``CorpusConfig``, optional) supplies syllabus settings, taxonomy levels and
    the templates used to re-render a prompt that is no longer in the LLM cache.
    """

    run_dir: Path
    taxonomy_dir: Path
    cache_dir: Path | None = None
    config: Any = None
    read_only: bool = False
    host: str = "127.0.0.1"
    token: str | None = None
    csrf_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    page_size: int = 50

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.taxonomy_dir = Path(self.taxonomy_dir)
        if self.cache_dir is not None:
            self.cache_dir = Path(self.cache_dir)
        if self.host not in LOOPBACK_HOSTS and not self.token:
            raise ValueError(f"serving on {self.host} needs a token")


async def checked_form(request: Request) -> Any:
    """The POSTed form after the read-only and CSRF checks (403 when either fails)."""
    settings: ReviewSettings = request.app.state.settings
    if settings.read_only:
        raise HTTPException(403, "read-only: this review app was started with --read-only")
    form = await request.form(max_fields=MAX_FORM_FIELDS)
    given = str(form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or "")
    if not given or not hmac.compare_digest(given.encode(), settings.csrf_token.encode()):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
    return form


def page_context(request: Request) -> dict[str, Any]:
    """What every page template gets: settings, the CSRF token, the run's name."""
    settings: ReviewSettings = request.app.state.settings
    return {
        "settings": settings,
        "csrf_token": settings.csrf_token,
        "read_only": settings.read_only,
        "run_name": settings.run_dir.name,
    }
