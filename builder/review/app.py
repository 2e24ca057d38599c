"""The review app: a Starlette ASGI application over one run and one taxonomy directory.

``create_app(settings)`` builds it; ``builder.review.server.serve`` runs it under uvicorn.
Pages are server-rendered Jinja templates (``templates/``, autoescaped) with a little plain
JavaScript (``static/review.js``); there is no build step.

Security, in the order a request meets it:

1. **Host**: without a token, only ``127.0.0.1`` and ``localhost`` (and the address the app
   listens on) are accepted as ``Host``, so a DNS-rebinding page cannot reach the app under
   another name. With a token any name is (remote curators use the machine's own name);
   the token is what a rebinding page cannot know.
2. **Token**: with ``settings.token`` (required for any host but loopback), every request
   must carry it: ``Authorization: Bearer T``, or ``?token=T`` once (which sets an HttpOnly,
   SameSite=Strict cookie), or that cookie.
3. **CSRF**: every POST must carry the per-process CSRF token that pages embed in their forms
   (field ``csrf_token`` or header ``X-CSRF-Token``); without it the POST is refused (403).
4. **Read-only**: with ``settings.read_only`` every POST is refused (403) and pages show no
   write controls.
5. **Ids and paths**: node and subject ids must exist in the taxonomy and document ids must
   look like ids; no request value is ever used as a file path, so nothing outside the
   taxonomy and run directories can be read or written.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from builder.review.queries import RunData

__all__ = ["TOKEN_COOKIE", "ReviewSettings", "create_app"]

TOKEN_COOKIE = "corpus_review_token"
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


class _Guard:
    """Host and token checks for every request (ASGI middleware)."""

    def __init__(self, app: ASGIApp, settings: ReviewSettings) -> None:
        self.app = app
        self.settings = settings
        self.hosts = {*LOOPBACK_HOSTS, settings.host}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        hostname = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
        if hostname not in self.hosts and not self.settings.token:
            await PlainTextResponse("unknown host", status_code=400)(scope, receive, send)
            return
        token = self.settings.token
        set_cookie = False
        if token:
            given = request.cookies.get(TOKEN_COOKIE) or ""
            auth = request.headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            query = request.query_params.get("token")
            if query is not None:
                given, set_cookie = query, True
            if not hmac.compare_digest(given.encode(), token.encode()):
                response = PlainTextResponse(
                    "a token is required: open the URL `corpus review` printed", status_code=401
                )
                await response(scope, receive, send)
                return

        async def send_with_cookie(message: Any) -> None:
            if set_cookie and message["type"] == "http.response.start":
                cookie = f"{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
                message.setdefault("headers", []).append((b"set-cookie", cookie.encode()))
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _templates() -> Jinja2Templates:
    env = Environment(
        loader=PackageLoader("builder.review", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = lambda v: "-" if v is None else f"{100 * v:.1f}%"
    env.filters["num"] = lambda v: "-" if v is None else f"{v:,}"
    return Jinja2Templates(env=env)


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


async def _http_error(request: Request, exc: Exception) -> Response:
    status = int(getattr(exc, "status_code", 500))
    detail = str(getattr(exc, "detail", exc))
    return request.app.state.templates.TemplateResponse(
        request,
        "error.html",
        {"title": f"Error {status}", "problems": [detail], **page_context(request)},
        status_code=status,
    )


def page_context(request: Request) -> dict[str, Any]:
    """What every page template gets: settings, the CSRF token, the run's name."""
    settings: ReviewSettings = request.app.state.settings
    return {
        "settings": settings,
        "csrf_token": settings.csrf_token,
        "read_only": settings.read_only,
        "run_name": settings.run_dir.name,
    }


def create_app(settings: ReviewSettings) -> Starlette:
    """The review app for ``settings`` (see the module docstring for what guards it)."""
    from builder.review import routes

    static = Path(__file__).with_name("static")
    app = Starlette(
        routes=[
            Route("/", routes.home),
            Route("/taxonomy", routes.taxonomy_page),
            Route("/proposals", routes.proposals_page),
            Route("/proposals/nodes", routes.decide_nodes, methods=["POST"]),
            Route("/proposals/nodes/{node_id}/edit", routes.edit_node_route, methods=["POST"]),
            Route("/proposals/syllabi", routes.decide_syllabi, methods=["POST"]),
            Route("/documents", routes.documents_page),
            Route("/documents/{doc_id}", routes.document_page),
            Route("/flags", routes.flags_page),
            Route("/flags", routes.flag_route, methods=["POST"]),
            Route("/flags/confirm", routes.flag_confirm_page),
            Route("/flags/unflag", routes.unflag_route, methods=["POST"]),
            Mount("/static", StaticFiles(directory=static), name="static"),
        ],
        middleware=[Middleware(_Guard, settings=settings)],
        exception_handlers={HTTPException: _http_error},
    )
    app.state.settings = settings
    app.state.templates = _templates()
    app.state.run = RunData(settings.run_dir)
    app.state.taxonomy_cache = {}
    return app
