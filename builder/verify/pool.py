"""A pool of pre-started sandbox fork servers, so a check costs a fork, not an interpreter.

Starting ``python -I -S -B`` inside ``unshare``/``setpriv`` and importing what a check needs
costs 60-80 ms on a loaded 2-core machine; forking an already started server costs ~1-2 ms.
Each server (``_forkserver.py``) runs in the sandbox's namespaces with its capabilities
dropped, imports once what a check needs (the standard library modules generated tests use;
sympy and ``builder.verify.quant`` for quantitative checks), and forks one fresh child per
check, which sets that check's limits and audit hook itself. The server never runs untrusted
code, so checks cannot leak state into each other.

Lifetime and safety:

* **Lazy**: no server starts until the first check of its kind; each server handles one
  check at a time and the pool grows to the number of concurrent callers (threads).
* **Clean shutdown**: ``shutdown_pools()`` (also run ``atexit``) closes every control
  socket; a server exits on end of file, killing its running child first. If the builder is
  killed with ``-9`` the kernel closes the sockets, so the same happens; children die with
  their server (``PR_SET_PDEATHSIG``). The servers are started without ``setpriv
  --pdeathsig``, because that signal follows the *thread* that started them and a pool is
  often started from a short-lived worker thread.
* **Replaced when lost**: a server that died (killed, OOM) is dropped and the check that was
  running on it is retried once on a fresh one (``ServerLost``).
* **Process pools**: pools belong to the process that made them. A ``fork``-ed child (e.g. a
  fork-context ``multiprocessing`` worker) forgets the parent's pools without touching their
  servers and starts its own on first use; ``spawn``-ed workers start their own anyway, and
  their servers end when the worker exits.
"""

from __future__ import annotations

import array
import atexit
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from builder.verify.errors import SandboxError

FRAME = "!cq"
FRAME_SIZE = struct.calcsize(FRAME)
START_TIMEOUT_S = 120.0


class ServerLost(Exception):
    """The fork server running a check died; the check may be retried on a fresh one."""


@dataclass
class _Server:
    proc: subprocess.Popen[bytes]
    sock: socket.socket
    pid: int
    child: int | None = None
    checks: int = 0


def _recv_frame(sock: socket.socket, timeout: float | None) -> tuple[bytes, int] | None:
    """One frame from a server; None on timeout; raises ServerLost on end of file."""
    sock.settimeout(None if timeout is None else max(timeout, 1e-3))  # 0 means non-blocking
    data = b""
    try:
        while len(data) < FRAME_SIZE:
            chunk = sock.recv(FRAME_SIZE - len(data))
            if not chunk:
                raise ServerLost("the sandbox server closed its socket")
            data += chunk
    except TimeoutError:
        if data:
            raise ServerLost("the sandbox server sent half a message") from None
        return None
    except OSError as exc:
        raise ServerLost(f"the sandbox server's socket failed: {exc}") from exc
    tag, value = struct.unpack(FRAME, data)
    return tag, value


class PoolCheck:
    """One check running on one server: its child's pid, its end, killing it."""

    def __init__(self, pool: SandboxPool, server: _Server, pid: int) -> None:
        self._pool = pool
        self._server = server
        self.pid = pid
        self.server_pid: int | None = server.pid
        self.returncode: int | None = None
        self._done = False

    def wait(self, timeout: float | None) -> int | None:
        """The child's return code (``-signal`` when killed), or None if still running."""
        if self.returncode is not None:
            return self.returncode
        frame = _recv_frame(self._server.sock, timeout)
        if frame is None:
            return None
        tag, status = frame
        if tag != b"X":
            raise ServerLost(f"unexpected message {tag!r} from the sandbox server")
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        """Ask the server to kill the child's process group (it is reaped by the server)."""
        if self.returncode is None:
            try:
                self._server.sock.sendall(struct.pack(FRAME, b"K", 0))
            except OSError:
                pass

    def finish(self) -> None:
        """Give the server back (or drop it, when the check did not end cleanly)."""
        if self._done:
            return
        self._done = True
        self._pool._release(self._server, healthy=self.returncode is not None)


@dataclass
class SandboxPool:
    """Fork servers of one kind ("code" or "quant") behind one launcher prefix."""

    kind: str
    prefix: tuple[str, ...]
    program_hex: str
    env: dict[str, str]
    python_flags: tuple[str, ...]
    extra: dict[str, object] = field(default_factory=dict)
    _idle: list[_Server] = field(default_factory=list)
    _all: list[_Server] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False
    started: int = 0

    def _start(self) -> _Server:
        import marshal

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cfg = {"role": "serve", "kind": self.kind, "control_fd": theirs.fileno(), **self.extra}
        cmd = [
            *self.prefix,
            sys.executable,
            *self.python_flags,
            "-c",
            "import marshal,sys;exec(marshal.loads(bytes.fromhex(sys.argv[1])))",
            self.program_hex,
            marshal.dumps(cfg).hex(),
        ]
        try:
            proc = subprocess.Popen(
                cmd,
                cwd="/",
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=(theirs.fileno(),),
                close_fds=True,
                start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            raise SandboxError(
                f"could not start the verification sandbox server: {exc}",
                hint="check that the Python interpreter is usable",
            ) from exc
        finally:
            theirs.close()
        try:
            frame = _recv_frame(ours, START_TIMEOUT_S)
        except ServerLost:
            frame = None
        if frame is None or frame[0] != b"R":
            proc.kill()
            _out, err = proc.communicate()
            ours.close()
            tail = err.decode("utf-8", "replace").strip()[-600:]
            raise SandboxError(
                f"the verification sandbox server did not start: {tail or 'no output'}",
                hint="set [verify] sandbox_pool = false to start one interpreter per check",
            )
        if proc.stderr is not None:
            proc.stderr.close()
        server = _Server(proc=proc, sock=ours, pid=proc.pid)
        with self._lock:
            self._all.append(server)
            self.started += 1
        return server

    def _acquire(self) -> _Server:
        """An idle live server, or a new one (servers that died while idle are dropped)."""
        while True:
            with self._lock:
                if self._closed:
                    raise SandboxError("the verification sandbox pool is shut down")
                server = self._idle.pop() if self._idle else None
            if server is None:
                return self._start()
            if server.proc.poll() is None:
                return server
            self._discard(server)

    def _release(self, server: _Server, *, healthy: bool) -> None:
        server.child = None
        with self._lock:
            if healthy and not self._closed and server.proc.poll() is None:
                self._idle.append(server)
                return
        self._discard(server)

    def _discard(self, server: _Server) -> None:
        with self._lock:
            if server in self._all:
                self._all.remove(server)
            if server in self._idle:
                self._idle.remove(server)
        server.sock.close()  # end of file: the server kills its child and exits
        try:
            server.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()

    def submit(self, body: bytes, pipes: Sequence[int]) -> PoolCheck:
        """Send one job with its three pipe write ends; returns once the child is forked.

        Raises ServerLost when the server died before it could fork.
        """
        server = self._acquire()
        header = struct.pack(FRAME, b"J", len(body))
        try:
            server.sock.settimeout(None)
            server.sock.sendmsg(
                [header], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", pipes))]
            )
            server.sock.sendall(body)
            frame = _recv_frame(server.sock, START_TIMEOUT_S)
        except (OSError, ServerLost) as exc:
            self._discard(server)
            raise ServerLost(f"the sandbox server died before the check started: {exc}") from exc
        if frame is None or frame[0] != b"P":
            self._discard(server)
            raise ServerLost("the sandbox server did not start the check")
        server.child = frame[1]
        server.checks += 1
        return PoolCheck(self, server, frame[1])

    def server_pids(self) -> list[int]:
        """The pids of the running servers (diagnostics and tests)."""
        with self._lock:
            return [s.pid for s in self._all]

    def running_checks(self) -> list[int]:
        """The pids of the check processes running right now (diagnostics and tests)."""
        with self._lock:
            return [s.child for s in self._all if s.child is not None]

    def close(self) -> None:
        """Stop every server (each kills its running child first)."""
        with self._lock:
            self._closed = True
            servers = list(self._all)
        for server in servers:
            self._discard(server)

    def forget(self) -> None:
        """In a forked child: drop the parent's servers without signalling them."""
        with self._lock:
            self._closed = True
            for server in self._all:
                server.sock.close()
                if server.proc.stderr is not None:
                    server.proc.stderr.close()
            self._all.clear()
            self._idle.clear()


_POOLS: dict[tuple[object, ...], SandboxPool] = {}
_POOLS_LOCK = threading.Lock()


def get_pool(key: tuple[object, ...], make: Callable[[], SandboxPool]) -> SandboxPool:
    """The pool for ``key`` in this process, made by ``make()`` the first time (no server
    starts until its first check)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = make()
            _POOLS[key] = pool
        return pool


def pools() -> list[SandboxPool]:
    """The pools this process started (diagnostics and tests)."""
    with _POOLS_LOCK:
        return list(_POOLS.values())


def shutdown_pools() -> None:
    """Stop every server of this process; the next check starts new ones."""
    with _POOLS_LOCK:
        current = list(_POOLS.values())
        _POOLS.clear()
    for pool in current:
        pool.close()


def _forget_after_fork() -> None:
    global _POOLS_LOCK
    _POOLS_LOCK = threading.Lock()  # the parent may have held it while forking
    for pool in list(_POOLS.values()):
        pool._lock = threading.Lock()
        pool.forget()
    _POOLS.clear()


atexit.register(shutdown_pools)
os.register_at_fork(after_in_child=_forget_after_fork)
