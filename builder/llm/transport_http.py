"""A lean HTTP/1.1 client for plain ``http://`` endpoints (``[llm] transport = "http"``, the
default).

Why: with an endpoint that answers at once, one driver process is bound by its own CPU per
request, and aiohttp's ``ClientSession`` was about a quarter of it (its request and response
objects, header multidicts, timers and stream readers; bench/RESULTS.md). A chat completion
needs little of that: one ``POST`` with a body the engine has already serialised, an answer
with a ``Content-Length`` (or chunked) body, keep-alive connections. This transport sends a
request head built once per endpoint plus the body's length, and parses the answer in an
``asyncio.Protocol``: status line, headers into a dict, the body by length or chunks.

What it does not do is left to the aiohttp transport it extends (``Transport``), so nothing
is lost: ``https://`` endpoints (TLS, proxies), streaming (``[llm] stream``), the Batch API
and model listing calls (``request_json``), and an ``http://`` endpoint reached through a
proxy from the environment (``HTTP_PROXY`` and not ``NO_PROXY``; loopback never is).

Same meaning as the aiohttp transport for everything the engine relies on: a ``Reply`` with
the body, the raw text, latency and ``x-ratelimit-*`` headers; every failure an
``AttemptError`` through ``classify_status`` (with ``Retry-After``) or a ``retry`` for a
timeout (``connect_timeout_s`` to connect, ``read_timeout_s`` of silence while waiting),
a reset, a truncated or malformed body. A connection is reused only after a complete answer
that did not ask to close it; one that failed or was cancelled is closed.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
import zlib
from collections import deque
from urllib.parse import urlsplit

from builder.llm.endpoint import Endpoint
from builder.llm.transport import (
    _LOOPBACK,
    _MAX_ERROR_BODY,
    AttemptError,
    Reply,
    Transport,
    check_completion,
    decode_json_reply,
    status_error,
)
from builder.llm.window import parse_ratelimit
from builder.settings.llm import LLMSettings

_MAX_HEAD = 64 * 1024  # a response head larger than this is not an OpenAI-style server


class _Response:
    """A complete HTTP response: status, headers (lower-case names) and body."""

    __slots__ = ("status", "headers", "body", "keep_alive")

    def __init__(self, status: int, headers: dict[str, str], body: bytes, keep_alive: bool):
        self.status = status
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive


class _ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 this client can read (a retry for the engine)."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.waiter: asyncio.Future[_Response] | None = None
        self.buf = bytearray()
        self.last_read = 0.0
        self.timer: asyncio.TimerHandle | None = None  # the read timeout (``_check_silence``)
        self._reset_parser()

    def _reset_parser(self) -> None:
        self.buf.clear()
        self.head: tuple[int, dict[str, str], bool] | None = None
        self.length: int | None = None  # body bytes expected (None: chunked or until close)
        self.chunked = False
        self.until_close = False
        self.got_bytes = False

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.until_close and self.head is not None:
            status, headers, _ = self.head
            waiter.set_result(_Response(status, headers, bytes(self.buf), False))
        elif self.got_bytes:
            waiter.set_exception(_ProtocolError("truncated response (connection closed)"))
        else:
            waiter.set_exception(exc or ConnectionResetError("server closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.last_read = self.loop.time()
        waiter = self.waiter
        if waiter is None or waiter.done():  # unsolicited bytes: the connection is unusable
            self.close()
            return
        self.got_bytes = True
        self.buf += data
        try:
            response = self._parse()
        except _ProtocolError as exc:
            waiter.set_exception(exc)
            self.close()
            return
        if response is not None:
            waiter.set_result(response)

    # -- parsing -------------------------------------------------------------------------
    def _parse(self) -> _Response | None:
        buf = self.buf
        if self.head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    raise _ProtocolError("response head too large")
                return None
            self.head = self._parse_head(bytes(buf[:end]))
            del buf[: end + 4]
        status, headers, keep_alive = self.head
        if self.length is not None:
            if len(buf) < self.length:
                return None
            if len(buf) > self.length:
                raise _ProtocolError("more bytes than Content-Length")
            return _Response(status, headers, bytes(buf), keep_alive)
        if self.chunked:
            body = _dechunk(buf)
            if body is None:
                return None
            return _Response(status, headers, body, keep_alive)
        return None  # until close

    def _parse_head(self, head: bytes) -> tuple[int, dict[str, str], bool]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise _ProtocolError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
        try:
            status = int(parts[1])
        except ValueError:
            raise _ProtocolError(f"bad status line: {lines[0][:80]!r}") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _ProtocolError(f"bad header line: {line[:80]!r}")
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        connection = headers.get("connection", "").lower()
        keep_alive = "close" not in connection and (
            parts[0] != "HTTP/1.0" or "keep-alive" in connection
        )
        if status in (204, 304) or 100 <= status < 200:
            self.length = 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self.chunked = True
        elif "content-length" in headers:
            try:
                self.length = int(headers["content-length"])
            except ValueError:
                raise _ProtocolError("bad Content-Length") from None
        else:
            self.until_close = True
            keep_alive = False
        return status, headers, keep_alive

    # -- use -----------------------------------------------------------------------------
    def send(self, data: bytes) -> asyncio.Future[_Response]:
        self._reset_parser()
        self.waiter = self.loop.create_future()
        self.last_read = self.loop.time()
        assert self.transport is not None
        self.transport.write(data)
        return self.waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _dechunk(buf: bytearray) -> bytes | None:
    """The body of a complete chunked message in ``buf`` (trailers ignored), None if more is
    to come; raises ``_ProtocolError`` for a malformed one."""
    out = bytearray()
    pos = 0
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_field = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
        try:
            size = int(size_field, 16)
        except ValueError:
            raise _ProtocolError("bad chunk size") from None
        pos = eol + 2
        if size == 0:
            end = buf.find(b"\r\n\r\n", pos - 2)
            return bytes(out) if end >= 0 else None
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos : pos + size]
        pos += size + 2


def _uses_proxy(host: str) -> bool:
    """Whether the aiohttp transport would send requests to ``host`` through a proxy (it
    trusts the environment except for loopback servers)."""
    if host.startswith(_LOOPBACK) or host == "::1":
        return False
    proxies = urllib.request.getproxies()
    return bool(proxies.get("http")) and not urllib.request.proxy_bypass(host)


class HttpTransport(Transport):
    """The lean client for plain ``http://`` chat completions (see the module docstring);
    the aiohttp transport for the rest."""

    def __init__(self, ep: Endpoint, settings: LLMSettings) -> None:
        super().__init__(ep, settings)
        self._idle: deque[_Connection] = deque()
        self._head: bytes | None = None
        self._url: tuple[str, int, str] | None = None
        self._checked = False

    def _lean(self) -> tuple[str, int, str] | None:
        """(host, port, path) of the chat URL when the lean client can serve it, else None.
        Worked out on first use: the embedded server's URL is known only once it runs."""
        if not self._checked:
            self._checked = True
            parts = urlsplit(self.url("chat/completions"))
            if (
                parts.scheme != "http"
                or not parts.hostname
                or parts.username
                or _uses_proxy(parts.hostname)
            ):
                return None
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            host_header = parts.netloc
            lines = [f"POST {path} HTTP/1.1", f"Host: {host_header}"]
            headers = self._headers()
            if any("\r" in f"{k}{v}" or "\n" in f"{k}{v}" for k, v in headers.items()):
                return None  # aiohttp refuses such a header with a clear error
            lines += [f"{k}: {v}" for k, v in headers.items()]
            lines += ["Accept-Encoding: identity", "Connection: keep-alive"]
            try:
                self._head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
            except UnicodeEncodeError:  # a header aiohttp may know how to send
                return None
            self._url = (parts.hostname, parts.port or 80, path)
        return self._url

    async def close(self) -> None:
        while self._idle:
            self._idle.popleft().close()
        self._url = None
        self._checked = False
        await super().close()

    async def chat(self, data: bytes, *, stream: bool = False) -> Reply:
        """POST one chat completion. Raises ``AttemptError`` for anything but a good answer."""
        target = None if stream else self._lean()
        if target is None:
            return await super().chat(data, stream=stream)
        t0 = time.perf_counter()
        response = await self._exchange(target, data)
        ratelimit = parse_ratelimit(response.headers)
        if response.status != 200:
            err = self._error(response)
            err.ratelimit = ratelimit
            raise err
        body = response.body
        encoding = response.headers.get("content-encoding")
        if encoding and encoding != "identity":
            body = _decompress(body, encoding)
        raw_text, parsed = decode_json_reply(body)
        check_completion(parsed)
        return Reply(parsed, time.perf_counter() - t0, raw_text, ratelimit)

    def _error(self, response: _Response) -> AttemptError:
        text = response.body[:_MAX_ERROR_BODY].decode("utf-8", "replace")
        return status_error(self.ep, response.status, text, response.headers)

    async def _connect(self, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(loop), host, port),
                self.settings.connect_timeout_s,
            )
        except TimeoutError:
            raise AttemptError("retry", "timed out waiting for the server") from None
        except OSError as exc:
            raise AttemptError(
                "retry", f"cannot connect to {self.ep.label} ({exc.strerror or exc})"
            ) from None
        return conn

    async def _exchange(self, target: tuple[str, int, str], data: bytes) -> _Response:
        """Send one request on an idle connection (or a new one) and wait for its answer,
        at most ``read_timeout_s`` of silence."""
        conn = None
        while self._idle:
            candidate = self._idle.pop()
            if not candidate.closed:
                conn = candidate
                break
        if conn is None:
            conn = await self._connect(target[0], target[1])
        assert self._head is not None
        waiter = conn.send(self._head + str(len(data)).encode() + b"\r\n\r\n" + data)
        loop = conn.loop
        timeout = self.settings.read_timeout_s
        conn.timer = loop.call_later(timeout, self._check_silence, conn, timeout)
        try:
            response = await waiter
        except asyncio.CancelledError:
            conn.close()
            raise
        except _ProtocolError as exc:
            conn.close()
            raise AttemptError("retry", str(exc)) from None
        except TimeoutError:
            conn.close()
            raise AttemptError("retry", "timed out waiting for the server") from None
        except OSError as exc:
            conn.close()
            raise AttemptError(
                "retry", f"connection error ({exc.__class__.__name__}: {exc})"
            ) from None
        finally:
            if conn.timer is not None:
                conn.timer.cancel()
            conn.waiter = None
        if response.keep_alive and not conn.closed:
            self._idle.append(conn)
        else:
            conn.close()
        return response

    @staticmethod
    def _check_silence(conn: _Connection, timeout: float) -> None:
        """The read timeout: fail the request after ``timeout`` s without a byte, else look
        again when that much silence could have passed (one timer per request, not per read)."""
        waiter = conn.waiter
        if waiter is None or waiter.done():
            return
        quiet = conn.loop.time() - conn.last_read
        if quiet >= timeout:
            waiter.set_exception(TimeoutError())
            return
        conn.timer = conn.loop.call_later(
            timeout - quiet, HttpTransport._check_silence, conn, timeout
        )


def _decompress(body: bytes, encoding: str) -> bytes:
    """A ``gzip`` or ``deflate`` body decoded (we ask for none, but a server may send it)."""
    encoding = encoding.lower()
    try:
        if encoding in ("gzip", "x-gzip"):
            return zlib.decompress(body, 16 + zlib.MAX_WBITS)
        if encoding == "deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, -zlib.MAX_WBITS)
    except zlib.error:
        raise AttemptError("retry", f"malformed {encoding} body") from None
    raise AttemptError("retry", f"unsupported Content-Encoding: {encoding}")
