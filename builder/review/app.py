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
from builder.review.web import LOOPBACK_HOSTS, ReviewSettings, page_context

__all__ = ["LOOPBACK_HOSTS", "TOKEN_COOKIE", "ReviewSettings", "create_app"]

TOKEN_COOKIE = "corpus_review_token"


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


async def _http_error(request: Request, exc: Exception) -> Response:
    status = int(getattr(exc, "status_code", 500))
    detail = str(getattr(exc, "detail", exc))
    return request.app.state.templates.TemplateResponse(
        request,
        "error.html",
        {"title": f"Error {status}", "problems": [detail], **page_context(request)},
        status_code=status,
    )


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
            Route(
                "/proposals/syllabi/{subject_id}/sessions/{number:int}/edit",
                routes.edit_session_route,
                methods=["POST"],
            ),
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
