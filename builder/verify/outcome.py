"""What a sandboxed check ended with: reading the child's result pipe, output and exit.

``collect`` waits for a child (a fresh interpreter or a fork-server check), reads its one
result line (``<nonce> <dict literal>``) and its bounded stdout/stderr, and turns the exit
into a ``SandboxResult``. Kept apart from ``sandbox`` (which sets a child up) so each side
reads on its own.
"""

from __future__ import annotations

import ast
import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from builder.settings.filters import VerifySettings
from builder.verify.errors import SandboxError
from builder.verify.pool import PoolCheck

MAX_RESULT_BYTES = 1 << 20


@dataclass(frozen=True)
class SandboxResult:
    """What one sandboxed run ended with.

    ``status`` is one of passed, tests_failed, timeout, memory, crashed, syntax_error,
    no_tests, output_limit, forbidden (and probe for ``probe_sandbox``).
    """

    status: str
    detail: str = ""
    elapsed_s: float = 0.0
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    passed: int = 0
    failed: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    #: the process that ran the check, and the fork server it came from (None: a fresh
    #: interpreter, ``sandbox_pool = false``)
    pid: int | None = None
    server_pid: int | None = None


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def tail(data: bytes, n: int = 600) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text if len(text) <= n else "..." + text[-n:]


class FreshChild:
    """``collect``'s view of a fresh interpreter (a Popen in its own session)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.server_pid: int | None = None

    def wait(self, timeout: float | None) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        kill_group(self.proc.pid)

    def finish(self) -> None:
        kill_group(self.proc.pid)  # whatever is left of its process group


def collect(
    child: FreshChild | PoolCheck,
    fds: tuple[int, int, int],
    settings: VerifySettings,
    nonce: str,
    started: float,
) -> SandboxResult:
    """Read the child's stdout, stderr and result pipes with bounded memory until it ends,
    then classify the outcome."""
    cap = settings.max_output_kb * 1024
    out_fd, err_fd, result_fd = fds
    buffers: dict[int, bytearray] = {
        out_fd: bytearray(),
        err_fd: bytearray(),
        result_fd: bytearray(),
    }
    printed = 0
    timed_out = over_output = over_result = False
    deadline = started + settings.timeout_s
    with selectors.DefaultSelector() as sel:
        for fd in buffers:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map() and not (timed_out or over_output or over_result):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _events in sel.select(remaining):
                fd = key.fd
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(fd)
                    continue
                if fd == result_fd:
                    buffers[fd] += chunk
                    over_result = len(buffers[fd]) > MAX_RESULT_BYTES
                    continue
                printed += len(chunk)
                room = cap - len(buffers[fd])
                if room > 0:
                    buffers[fd] += chunk[:room]
                if printed > cap:
                    over_output = True
                    break
    returncode: int | None = None
    if not (timed_out or over_output):
        # The pipes are closed, but the child may still be running (it can close them).
        returncode = child.wait(max(0.0, deadline - time.monotonic()))
        timed_out = returncode is None
    if returncode is None:
        child.kill()
        returncode = child.wait(None)
    child.finish()
    elapsed = time.monotonic() - started
    stdout, stderr = bytes(buffers[out_fd]), bytes(buffers[err_fd])

    def result(status: str, detail: str, **extra: Any) -> SandboxResult:
        return SandboxResult(
            status=status,
            detail=detail,
            elapsed_s=elapsed,
            returncode=returncode,
            stdout=tail(stdout, 2000),
            stderr=tail(stderr, 2000),
            pid=child.pid,
            server_pid=child.server_pid,
            **extra,
        )

    if over_output:
        head = tail(stdout[:300] or stderr[:300], 300)
        return result(
            "output_limit",
            f"printed more than {settings.max_output_kb} KB (stdout+stderr); first output: "
            f"{head!r}",
        )
    lines = bytes(buffers[result_fd]).splitlines()
    signed = [ln for ln in lines if ln.startswith(nonce.encode() + b" ")]
    if over_result or len(lines) > 1 or (lines and not signed):
        return result("forbidden", "the tested code wrote to the sandbox's result channel")
    if signed:
        try:
            body = ast.literal_eval(signed[0][len(nonce) + 1 :].decode("utf-8", "replace"))
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            body = None
        if not isinstance(body, dict):
            return result("forbidden", "the sandbox's result line was corrupted")
        status = str(body.get("status"))
        if status == "sandbox_error":
            raise SandboxError(
                f"the verification sandbox failed: {body.get('detail')}",
                hint="set [verify] network_namespace/drop_capabilities or report a bug",
            )
        return result(
            status,
            str(body.get("detail") or ""),
            passed=int(body.get("passed") or 0),
            failed=int(body.get("failed") or 0),
            info=body.get("info") or {},
        )
    if timed_out:
        return result("timeout", f"wall-clock limit of {settings.timeout_s:g} s exceeded")
    if returncode is not None and returncode < 0:
        sig = -returncode
        name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            cpu = settings.cpu_s or settings.timeout_s
            return result("timeout", f"CPU-time limit of {cpu:g} s exceeded ({name})")
        if sig == signal.SIGXFSZ:
            return result("output_limit", f"file size limit of {settings.max_file_mb:g} MB")
        if b"MemoryError" in stderr or b"out of memory" in stderr.lower():
            return result("memory", f"killed by {name} after running out of memory")
        return result("crashed", f"killed by signal {name}; stderr: {tail(stderr, 400)}")
    if b"MemoryError" in stderr:
        return result("memory", f"exited with code {returncode}: {tail(stderr, 400)}")
    return result(
        "crashed",
        f"exited with code {returncode} before the tests finished"
        + (f"; stderr: {tail(stderr, 400)}" if stderr.strip() else ""),
    )
