"""Run untrusted Python (a generated solution and its tests) in a contained subprocess.

Why a subprocess and not ``exec``: generated code loops, allocates, prints and touches the
system by accident (and, rarely, on purpose); a separate process can be killed, limited and
thrown away. The layers, outermost first:

* **Process**: the same interpreter (``sys.executable``) with ``-I -S -B`` (isolated mode: no
  user site, no current directory on ``sys.path``, ``PYTHON*`` variables ignored; no
  site-packages; no ``.pyc`` writes), ``cwd`` a fresh empty directory (``sandbox_root()``,
  tmpfs when available) holding only ``solution.py`` and ``test_solution.py``, a minimal
  environment (``PATH`` empty, ``LANG=C.UTF-8``, ``HOME``/``TMPDIR`` = the sandbox dir), stdin
  ``/dev/null``, every other file descriptor closed, and a new session, so the whole process
  group is killed at the end.
  By default (``[verify] sandbox_pool = true``) that interpreter is a pre-started fork server
  (``builder.verify.pool``, ``_forkserver.py``) already inside the namespaces below, and each
  check is a fresh child forked from it: same flags, limits, hook and directory, ~1-2 ms to
  start instead of a new interpreter. Differences from a fresh interpreter: the standard
  library modules generated tests use are already imported (importing them is allowed
  anyway), and all children of one server share its string-hash seed.
* **Kernel, when available** (probed once and cached): ``unshare --net`` puts the child in a
  new network namespace with only a down loopback (no network at all, not even 127.0.0.1 of
  the host); ``setpriv`` empties the capability bounding set and sets no-new-privs, so a root
  child cannot raise its limits back or use root-only syscalls. Both need root (or
  unprivileged user namespaces, tried with ``--map-root-user``). ``setpriv --pdeathsig`` also
  kills the child if the builder itself dies; as a last resort the runner arms ``alarm()``
  at the wall-clock limit plus two seconds.
* **Resource limits** set by the runner before untrusted code (soft = hard): ``RLIMIT_CPU``
  (CPU seconds -> SIGXCPU -> ``timeout``), ``RLIMIT_AS`` (memory -> ``MemoryError`` ->
  ``memory``), ``RLIMIT_FSIZE`` (largest file), ``RLIMIT_NOFILE``, ``RLIMIT_NPROC``,
  ``RLIMIT_CORE`` = 0. ``RLIMIT_NPROC`` is not enforced for uid 0, so as root the fork
  barrier is the audit hook.
* **Audit hook** (PEP 578, installed by the runner; it cannot be removed by the code it
  guards): the first socket, subprocess, ``os.system``/exec/spawn/fork, ``os.kill``, ctypes,
  rlimit change, heap introspection, or file access outside the sandbox directory (the
  standard library may be read) ends the process with a ``forbidden`` result naming the event.
  Ending at once, rather than raising, means a bare ``except:`` in the tested code cannot
  swallow the violation, and a fork loop stops at its first fork.
* **Parent side**: wall-clock deadline (then ``killpg(SIGKILL)`` -> ``timeout``); stdout and
  stderr are read incrementally and capped (the child is killed when it prints more than the
  cap -> ``output_limit``), so a print loop costs the parent at most the cap in memory.

The runner writes exactly one line, ``<nonce> <dict literal>``, to a pipe opened for it (not
stdout), with a random nonce it was given; a missing, extra or unsigned line is not trusted.

Allowed on purpose: creating AF_UNIX sockets (asyncio's self-pipe; connect/bind stay denied),
threads, reading the standard library and ``/usr/share/zoneinfo``, and writing up to
``max_files`` files inside the sandbox directory. Only the standard library is importable
(plus a small ``pytest`` stand-in and the solution as module ``solution``/``main``).

What this cannot stop: the audit hook runs in the same interpreter as the code it guards, so
code that means harm can walk Python frames to the runner and forge a result, monkeypatch the
stdlib functions the hook relies on (``os.path.realpath``), or escape through a C extension or a
memory-corruption bug; ``os.stat`` and other unaudited calls still see the file system
(metadata only). As root the child keeps uid 0 (without capabilities), so past the hook it
could write root-owned files; dropping to another uid is not possible here because the
interpreter lives under ``/root``. Without root or user namespaces there is no network
namespace and the audit hook alone blocks sockets. The threat model is sloppy or confused
generated code, not a determined attacker: for hostile input, run the whole builder in a VM
or a gVisor-class sandbox.

Cost (measured, 2 cores, see ``bench/bench_verify.py`` and bench/RESULTS.md): one interpreter
per check takes ~35-45 ms idle (66-84 ms on a loaded machine); a check on the pool costs a
fork and the tests themselves.
"""

from __future__ import annotations

import ast
import functools
import marshal
import os
import pickle
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from builder.records import ChatResult
from builder.settings.filters import VerifySettings
from builder.util.pyast import parse
from builder.verify.errors import SandboxError
from builder.verify.launcher import Launcher, detect_launcher
from builder.verify.outcome import FreshChild, SandboxResult, collect, kill_group
from builder.verify.pool import PoolCheck, SandboxPool, ServerLost, get_pool

HERE = Path(__file__).parent
RUNNER_PATH = HERE / "_runner.py"
PROGRAM_PARTS = ("_runner.py", "_pytest_shim.py", "_forkserver.py")
SANDBOX_USER_ENV = {"PATH": "", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
# Read-only directories the child may open besides the standard library.
EXTRA_READ_ROOTS = ("/usr/share/zoneinfo",)


# The child runs the runner from a code object compiled once here and passed as marshal data:
# compiling ~30 KB of source in every child would cost more than starting the interpreter.
BOOTSTRAP = "import marshal,sys;exec(marshal.loads(bytes.fromhex(sys.argv[1])))"


@functools.cache
def _program_hex() -> str:
    """The sandbox program: the runner, the pytest stand-in (as text) and the fork server."""
    runner, shim, server = (HERE / name for name in PROGRAM_PARTS)
    source = (
        runner.read_text(encoding="utf-8")
        + f"\n_PYTEST_SHIM = {shim.read_text(encoding='utf-8')!r}\n"
        + server.read_text(encoding="utf-8")
        + "\n_entry()\n"
    )
    return marshal.dumps(compile(source, "<sandbox-runner>", "exec", dont_inherit=True)).hex()


SANDBOX_PREFIX = "corpus-verify-"
STALE_AFTER_S = 2 * 3600  # twice the largest allowed timeout_s


SHM = "/dev/shm"
SHM_MIN_FREE = 1 << 30  # a container's 64 MB /dev/shm would make checks fail for want of room


@functools.cache
def sandbox_root(tmp_dir: str | None = None) -> str:
    """Where sandbox directories are made: ``tmp_dir`` if set, else ``/dev/shm`` when it is a
    writable memory file system with >= 1 GiB free, else the system temp dir.

    Why memory: creating, filling and removing a directory costs ~3 ms on a disk file system
    (ext4 with ``discard`` here) and ~0.1 ms on tmpfs, a fifth of a check on the pool. What a
    check may write is bounded by ``max_files`` x ``max_file_mb``.
    """
    if tmp_dir:
        return tmp_dir
    try:
        st = os.statvfs(SHM)
        if os.access(SHM, os.W_OK | os.X_OK) and st.f_bavail * st.f_frsize >= SHM_MIN_FREE:
            return SHM
    except OSError:
        pass
    return tempfile.gettempdir()


@functools.cache
def _sweep_stale(root_dir: str) -> None:
    """Once per process: remove sandbox dirs left by a builder that was killed with -9."""
    root = Path(root_dir)
    cutoff = time.time() - STALE_AFTER_S
    try:
        candidates = list(root.glob(SANDBOX_PREFIX + "*"))
    except OSError:
        return
    for path in candidates:
        try:
            if path.is_dir() and not path.is_symlink() and path.stat().st_mtime < cutoff:
                _remove_tree(str(path))
        except OSError:
            continue


def has_toplevel_checks(tests: str) -> bool:
    """True when module-level code of the tests itself checks something (bare asserts, calls)."""
    try:
        tree = parse(tests)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            continue
        for sub in ast.walk(node):
            if isinstance(sub, ast.Assert):
                return True
    return False


def _server_prefix(launcher: Launcher) -> tuple[str, ...]:
    """The launcher without ``--pdeathsig``: that signal follows the starting *thread*, and a
    pool may be started from a short-lived worker thread (the server watches its socket)."""
    return tuple(arg for arg in launcher.prefix if not arg.startswith("--pdeathsig"))


def _code_pool(settings: VerifySettings) -> SandboxPool:
    launcher = detect_launcher(settings.network_namespace, settings.drop_capabilities)
    return get_pool(
        ("code", launcher.prefix, sys.executable),
        lambda: SandboxPool(
            kind="code",
            prefix=_server_prefix(launcher),
            program_hex=_program_hex(),
            env=dict(SANDBOX_USER_ENV),
            python_flags=("-I", "-S", "-B"),
            extra={"extra_read_roots": list(EXTRA_READ_ROOTS)},
        ),
    )


def _quant_pool(settings: VerifySettings) -> SandboxPool:
    launcher = detect_launcher(settings.network_namespace, settings.drop_capabilities)
    path = tuple(os.path.abspath(p) for p in sys.path if p)
    return get_pool(
        ("quant", launcher.prefix, sys.executable, path),
        lambda: SandboxPool(
            kind="quant",
            prefix=_server_prefix(launcher),
            program_hex=_program_hex(),
            env=dict(SANDBOX_USER_ENV),
            python_flags=("-I", "-B"),
            extra={"sys_path": list(path)},
        ),
    )


def sandbox_pools(settings: VerifySettings | None = None) -> dict[str, SandboxPool]:
    """The code and quantitative pools ``settings`` use in this process (not started yet if
    no check ran): for diagnostics and tests (``server_pids()``, ``running_checks()``)."""
    settings = settings or VerifySettings()
    return {"code": _code_pool(settings), "quant": _quant_pool(settings)}


def _limits(settings: VerifySettings) -> dict[str, Any]:
    return {
        "cpu_s": settings.cpu_s or settings.timeout_s,
        "wall_s": settings.timeout_s,
        "memory_bytes": settings.memory_mb * 1024 * 1024,
    }


def run_in_sandbox(
    solution: str,
    tests: str,
    settings: VerifySettings | None = None,
    *,
    mode: str = "test",
    probe_port: int | None = None,
) -> SandboxResult:
    """Run ``solution`` then ``tests`` in a fresh sandboxed process and classify the end.

    The process is a child forked from a pre-started server (``settings.sandbox_pool``, the
    default) or a fresh interpreter. ``mode="probe"`` runs a trusted self-check instead of
    the code (limits, interfaces, uid, capabilities, and optionally whether
    127.0.0.1:``probe_port`` is reachable): tests use it to show the isolation is real, not
    just claimed.
    """
    settings = settings or VerifySettings()
    _sweep_stale(sandbox_root(settings.tmp_dir))
    if not settings.sandbox_pool:
        return _run_code_once(solution, tests, settings, mode, probe_port, None)
    pool = _code_pool(settings)
    try:
        return _run_code_once(solution, tests, settings, mode, probe_port, pool)
    except ServerLost:  # the server was killed under the check: once more on a fresh one
        try:
            return _run_code_once(solution, tests, settings, mode, probe_port, pool)
        except ServerLost as exc:
            raise SandboxError(
                f"the verification sandbox server died twice: {exc}",
                hint="set [verify] sandbox_pool = false to start one interpreter per check",
            ) from exc


def _run_code_once(
    solution: str,
    tests: str,
    settings: VerifySettings,
    mode: str,
    probe_port: int | None,
    pool: SandboxPool | None,
) -> SandboxResult:
    sandbox = tempfile.mkdtemp(prefix=SANDBOX_PREFIX, dir=sandbox_root(settings.tmp_dir))
    nonce = secrets.token_hex(16)
    try:
        Path(sandbox, "solution.py").write_text(solution, encoding="utf-8", errors="replace")
        Path(sandbox, "test_solution.py").write_text(tests, encoding="utf-8", errors="replace")
        config = {
            "role": "check",
            "nonce": nonce,
            "sandbox": sandbox,
            "mode": mode,
            "probe_port": probe_port,
            **_limits(settings),
            "fsize_bytes": int(settings.max_file_mb * 1024 * 1024),
            "nofile": settings.max_open_files,
            "nproc": settings.max_processes,
            "max_files": settings.max_files,
            "toplevel_checks": has_toplevel_checks(tests),
            "extra_read_roots": list(EXTRA_READ_ROOTS),
        }
        env = dict(SANDBOX_USER_ENV, HOME=sandbox, TMPDIR=sandbox)
        if pool is not None:
            job = marshal.dumps({"cfg": config, "env": env})
            return _run_pooled(pool, job, settings, nonce)
        return _run_fresh(config, env, settings, nonce)
    finally:
        _remove_tree(sandbox)


def _run_fresh(
    config: dict[str, Any], env: dict[str, str], settings: VerifySettings, nonce: str
) -> SandboxResult:
    """One fresh interpreter for one check (``sandbox_pool = false``; the bench's baseline)."""
    launcher = detect_launcher(settings.network_namespace, settings.drop_capabilities)
    read_fd, write_fd = os.pipe()
    started = time.monotonic()
    config = dict(config, result_fd=write_fd)
    cmd = [
        *launcher.prefix,
        sys.executable,
        "-I",
        "-S",
        "-B",
        "-c",
        BOOTSTRAP,
        _program_hex(),
        marshal.dumps(config).hex(),
    ]
    proc: subprocess.Popen[bytes] | None = None
    try:
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=config["sandbox"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(write_fd,),
                close_fds=True,
                start_new_session=True,
            )
        except OSError as exc:
            raise SandboxError(
                f"could not start the verification sandbox: {exc}",
                hint="check that the Python interpreter and /tmp are usable",
            ) from exc
        os.close(write_fd)
        write_fd = -1
        if proc.stdout is None or proc.stderr is None:  # pragma: no cover - PIPE sets them
            raise SandboxError("the sandbox's output pipes are missing")
        child = FreshChild(proc)
        fds = (proc.stdout.fileno(), proc.stderr.fileno(), read_fd)
        return collect(child, fds, settings, nonce, started)
    finally:
        if write_fd >= 0:
            os.close(write_fd)
        os.close(read_fd)
        if proc is not None:
            if proc.returncode is None:  # not reaped yet: the pgid cannot have been reused
                kill_group(proc.pid)
                proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()


def _run_pooled(
    pool: SandboxPool, job: bytes, settings: VerifySettings, nonce: str
) -> SandboxResult:
    """Send one job to a pool server with three fresh pipes and collect its end."""
    pipes = [os.pipe() for _ in range(3)]
    started = time.monotonic()
    check: PoolCheck | None = None
    try:
        check = pool.submit(job, [w for _r, w in pipes])
        for _r, w in pipes:
            os.close(w)
        pipes = [(r, -1) for r, _w in pipes]
        return collect(check, tuple(r for r, _w in pipes), settings, nonce, started)
    finally:
        if check is not None:
            if check.returncode is None:
                check.kill()
            check.finish()
        for r, w in pipes:
            for fd in (r, w):
                if fd >= 0:
                    os.close(fd)


def run_quant_in_sandbox(
    doc: dict[str, Any], settings: VerifySettings, sample: ChatResult | None
) -> SandboxResult:
    """Compare a quantitative answer (``quant.verify_quantitative``) in a child forked from the
    quantitative pool (sympy already imported), under the wall, CPU and memory limits.

    ``status`` is "verdict" with the verdict's fields in ``info["verdict"]``, or why the
    comparison did not finish (timeout, memory, forbidden, crashed, output_limit).
    """
    nonce = secrets.token_hex(16)
    payload = pickle.dumps(({"structured": doc.get("structured")}, settings, sample))
    job = marshal.dumps({"nonce": nonce, "payload": payload, **_limits(settings)})
    pool = _quant_pool(settings)
    try:
        return _run_pooled(pool, job, settings, nonce)
    except ServerLost:
        return _run_pooled(pool, job, settings, nonce)


def _remove_tree(path: str) -> None:
    """Delete the sandbox directory even if the child made parts of it unreadable."""

    def retry(func: Any, target: str, _exc: BaseException) -> None:
        try:
            os.chmod(os.path.dirname(target), 0o700)
            os.chmod(target, 0o700)
            func(target)
        except OSError:
            pass

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=lambda func, target, info: retry(func, target, info[1]))


def probe_sandbox(
    settings: VerifySettings | None = None, *, probe_port: int | None = None
) -> dict[str, Any]:
    """Describe the sandbox as the child sees it (limits, interfaces, capabilities)."""
    res = run_in_sandbox("", "", settings, mode="probe", probe_port=probe_port)
    if res.status != "probe":
        raise SandboxError(f"sandbox probe failed: {res.status}: {res.detail} {res.stderr}")
    launcher = detect_launcher(
        (settings or VerifySettings()).network_namespace,
        (settings or VerifySettings()).drop_capabilities,
    )
    return {
        **res.info,
        "network_namespace": launcher.network_namespace,
        "capabilities_dropped": launcher.capabilities_dropped,
        "elapsed_s": res.elapsed_s,
    }
