"""Run the review app under uvicorn on a socket bound before the URL is printed.

Binding first means ``--port 0`` works (the OS picks a free port, the URL names it) and a
port already in use is a one-line error instead of a log line after startup.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from builder.errors import BuilderError
from builder.review.app import ReviewSettings, create_app

__all__ = ["bind", "serve", "url_of"]


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``BuilderError`` naming the fix if taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise BuilderError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="pass another --port (0 picks a free one)",
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(settings: ReviewSettings, sock: socket.socket) -> str:
    """The URL to open; it carries the token when one is required."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    return f"{url}?token={settings.token}" if settings.token else url


def serve(settings: ReviewSettings, port: int, on_ready: Callable[[str], None] = print) -> None:
    """Serve the app until interrupted; ``on_ready`` gets the URL once the socket listens."""
    import uvicorn

    sock = bind(settings.host, port)
    app = create_app(settings)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    on_ready(url_of(settings, sock))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
