"""The lean HTTP/1.1 client (``[llm] transport = "http"``, builder/llm/transport_http.py).

The engine's fault tests (test_llm_engine.py) run on it against the fake server; these cover
the HTTP it must read that the fake server does not send: chunked bodies, ``Connection:
close``, bodies that end with the connection, gzip, a server that talks nonsense, and the
keep-alive pool (one connection for requests in sequence, a fresh one after ``close``).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
from collections.abc import Iterator

import pytest

from builder.llm.endpoint import endpoints_from_settings
from builder.llm.transport import AttemptError
from builder.llm.transport_http import HttpTransport
from builder.settings.llm import LLMSettings

COMPLETION = json.dumps(
    {
        "id": "c1",
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi é"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
).encode()


class ScriptedServer:
    """A loopback TCP server answering each HTTP request with the next scripted bytes (the
    script's last entry repeats), recording the connections it accepted and the requests."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buf) < length:
                    buf += conn.recv(65536)
                with self.lock:
                    self.requests.append(head + b"\r\n\r\n" + buf[:length])
                    answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
                buf = buf[length:]
                conn.sendall(answer)
                if b"connection: close" in answer.lower():
                    return

    def close(self) -> None:
        self.sock.close()


def response(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    head = [f"HTTP/1.1 {status}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def with_length(body: bytes = COMPLETION, *headers: str, status: str = "200 OK") -> bytes:
    return response(body, f"Content-Length: {len(body)}", *headers, status=status)


def chunked(body: bytes, size: int = 7) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    out = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces)
    return response(out + b"0\r\nX-Trailer: 1\r\n\r\n", "Transfer-Encoding: chunked")


@pytest.fixture
def scripted() -> Iterator[type[ScriptedServer]]:
    made: list[ScriptedServer] = []

    def make(answers: list[bytes]) -> ScriptedServer:
        server = ScriptedServer(answers)
        made.append(server)
        return server

    yield make  # type: ignore[misc]
    for server in made:
        server.close()


def chat_all(server: ScriptedServer, n: int = 1, **settings) -> list:
    """``n`` chat calls in sequence through one transport; each reply or AttemptError."""
    s = LLMSettings(
        base_url=f"http://127.0.0.1:{server.port}/v1",
        model="m",
        read_timeout_s=5,
        default_headers={"X-Team": "t"},
        **settings,
    )
    ep = endpoints_from_settings(s)[0]

    async def go() -> list:
        transport = HttpTransport(ep, s)
        out: list = []
        try:
            for i in range(n):
                try:
                    out.append(await transport.chat(b'{"n":%d}' % i))
                except AttemptError as err:
                    out.append(err)
        finally:
            await transport.close()
        return out

    return asyncio.run(go())


def test_keep_alive_sends_requests_in_sequence_on_one_connection(scripted):
    server = scripted([with_length()])
    replies = chat_all(server, 3)
    assert [r.body["choices"][0]["message"]["content"] for r in replies] == ["hi é"] * 3
    assert replies[0].raw == COMPLETION.decode()
    assert server.connections == 1
    head, _, body = server.requests[2].partition(b"\r\n\r\n")
    assert body == b'{"n":2}'
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/chat/completions HTTP/1.1"
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    assert headers["host"] == f"127.0.0.1:{server.port}"
    assert headers["content-length"] == "7" and headers["x-team"] == "t"
    assert headers["content-type"] == "application/json"


def test_chunked_bodies_with_extensions_and_trailers_are_read(scripted):
    server = scripted([chunked(COMPLETION)])
    replies = chat_all(server, 2)
    assert all(r.raw == COMPLETION.decode() for r in replies)
    assert server.connections == 1


def test_connection_close_and_bodies_ending_with_the_connection(scripted):
    server = scripted(
        [
            with_length(COMPLETION, "Connection: close"),
            response(COMPLETION, "Connection: close"),  # no length: the body ends at close
        ]
    )
    replies = chat_all(server, 3)
    assert all(r.raw == COMPLETION.decode() for r in replies)
    assert server.connections == 3  # none of them could be reused


def test_gzip_bodies_are_decoded(scripted):
    server = scripted([with_length(gzip.compress(COMPLETION), "Content-Encoding: gzip")])
    (reply,) = chat_all(server)
    assert reply.body["choices"][0]["message"]["content"] == "hi é"


def test_error_statuses_are_classified_with_retry_after_and_ratelimits(scripted):
    error = json.dumps({"error": {"message": "slow down", "code": "rate_limit"}}).encode()
    server = scripted(
        [
            with_length(
                error,
                "Retry-After: 7",
                "X-RateLimit-Remaining-Requests: 0",
                status="429 Too Many Requests",
            ),
            with_length(error, status="401 Unauthorized"),
            with_length(b"not json at all"),
        ]
    )
    overloaded, auth, malformed = chat_all(server, 3)
    assert (overloaded.kind, overloaded.status, overloaded.retry_after) == ("retry", 429, 7.0)
    assert "slow down" in overloaded.reason
    assert overloaded.ratelimit is not None and overloaded.ratelimit.remaining_requests == 0
    assert (auth.kind, auth.status) == ("auth", 401)
    assert malformed.kind == "retry" and "malformed JSON" in malformed.reason
    assert server.connections == 1  # error answers with a length keep the connection


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"SMTP ready\r\n\r\n", "not an HTTP/1.x response"),
        # the whole length announced, half the body sent, then the server closes
        (with_length(COMPLETION, "Connection: close")[:-40], "truncated response"),
        (response(b"zz\r\n", "Transfer-Encoding: chunked"), "bad chunk size"),
    ],
)
def test_answers_that_are_not_http_or_are_cut_are_retries(scripted, answer, reason):
    (err,) = chat_all(scripted([answer]))
    assert isinstance(err, AttemptError) and err.kind == "retry"
    assert reason in err.reason


def test_a_server_that_refuses_connections_is_a_retry():
    # bound and never listening (kept open: no other process can take the port meanwhile)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    s = LLMSettings(base_url=f"http://127.0.0.1:{port}/v1", model="m")
    ep = endpoints_from_settings(s)[0]

    async def go() -> AttemptError:
        transport = HttpTransport(ep, s)
        try:
            await transport.chat(b"{}")
        except AttemptError as err:
            return err
        finally:
            await transport.close()
        raise AssertionError("no error")

    err = asyncio.run(go())
    sock.close()
    assert err.kind == "retry" and "cannot connect" in err.reason


def test_a_header_with_a_line_break_is_never_sent_as_is(scripted):
    # the lean client leaves it to aiohttp, which refuses it: no request reaches the server
    server = scripted([with_length()])
    s = LLMSettings(
        base_url=f"http://127.0.0.1:{server.port}/v1",
        model="m",
        default_headers={"X-Team": "t\r\nX-Injected: 1"},
    )
    ep = endpoints_from_settings(s)[0]

    async def go() -> None:
        transport = HttpTransport(ep, s)
        try:
            await transport.chat(b"{}")
        finally:
            await transport.close()

    with pytest.raises(ValueError):
        asyncio.run(go())
    assert server.requests == []
