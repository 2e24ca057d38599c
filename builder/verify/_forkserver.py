"""The sandbox fork server (trusted part; runs inside the sandbox's namespaces).

Like ``_runner.py`` it is not imported by the builder: ``builder.verify.sandbox`` joins the
text of ``_runner.py``, ``_pytest_shim.py`` and this file into one program, compiles it once
and starts it with ``python -I [-S] -B -c BOOTSTRAP <program> <config>`` (both marshal data,
hex-encoded). ``_entry()`` at the end of the program dispatches on the configuration:

* ``"check"``: run one code check in this fresh interpreter (``run_check``) - the
  one-interpreter-per-check path.
* ``"serve"``: become a fork server. It imports once what a check needs, then, for each job
  received on its control socket (a UNIX stream socket shared with the builder), forks a child
  that takes the job's three pipes (stdout, stderr, result channel; passed as file
  descriptors with ``SCM_RIGHTS``) and runs the check. The server itself never runs untrusted
  code and never changes after start-up, so a check cannot leave anything behind for the next
  one: each child starts from the same pristine image, in its own session and sandbox
  directory, with its own limits and audit hook.

Protocol (all frames are 9 bytes, ``!cq``: a tag and a number; a job is followed by its body):

* builder -> server: ``J <n>`` + ``n`` bytes of marshal data (with the three pipe fds
  attached), ``K 0`` (kill the running child's process group; ignored when idle).
* server -> builder: ``R <pid>`` once when ready, ``P <pid>`` when a child started,
  ``X <wait status>`` when it ended (its whole process group is killed before it is reaped).

Lifetime: the server exits when the control socket reaches end of file, i.e. when the builder
closes it or dies (even by ``kill -9``), killing its running child first. A child asks the
kernel for ``SIGKILL`` when the server dies (``PR_SET_PDEATHSIG``), so nothing outlives the
chain; the runner's ``alarm()`` stays as the last resort.
"""

_TAG_JOB = b"J"
_TAG_KILL = b"K"
_TAG_READY = b"R"
_TAG_STARTED = b"P"
_TAG_EXITED = b"X"
_FRAME = "!cq"
_FRAME_SIZE = 9
_PR_SET_PDEATHSIG = 1
# the modules a code check usually needs, imported once by the server (stdlib only)
_CODE_PRELOAD = (
    "_signal",
    "resource",
    "traceback",
    "linecache",
    "tokenize",
    "inspect",
    "unittest",
    "types",
    "math",
    "cmath",
    "random",
    "re",
    "collections",
    "itertools",
    "functools",
    "operator",
    "string",
    "heapq",
    "bisect",
    "typing",
    "dataclasses",
    "enum",
    "copy",
    "json",
    "decimal",
    "fractions",
    "statistics",
    "datetime",
    "pathlib",
    "tempfile",
    "textwrap",
    "contextlib",
    "abc",
    "io",
    "warnings",
    "asyncio",
)


def _recv_exact(sock, n):
    """``n`` bytes from the socket, or None at end of file."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _send_frame(sock, tag, value):
    import struct

    sock.sendall(struct.pack(_FRAME, tag, value))


def _serve(cfg):  # noqa: C901 - the server loop, kept in one place
    import array
    import os
    import select
    import signal
    import socket
    import struct
    import sys

    kind = cfg["kind"]
    sock = socket.socket(fileno=cfg["control_fd"])
    if kind == "quant":
        sys.path[:] = cfg["sys_path"]
        import pickle  # noqa: F401 - preloaded for the children

        import builder.verify.quant as quant

        # warm sympy's lazy imports once, so children do not each pay for them
        quant.answers_match(quant.parse_answer("1/2"), quant.parse_answer("0.5"), 1e-6)
    else:
        for name in _CODE_PRELOAD:
            try:
                __import__(name)
            except ImportError:
                pass
        _shim_code()  # noqa: F821 - defined by _runner.py in the same program
        _resolved_roots(tuple(sys.path) + tuple(cfg["extra_read_roots"]))  # noqa: F821
    import ctypes

    # in a holder the child empties, so no frame of a check can reach it
    tools = {"prctl": ctypes.CDLL(None, use_errno=True).prctl}
    del ctypes
    server_pid = os.getpid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)  # nothing from here on writes to the builder's pipes
    import gc

    gc.collect()
    gc.freeze()  # children's collections then leave the server's pages shared (no copy)
    _send_frame(sock, _TAG_READY, server_pid)

    fd_size = array.array("i").itemsize
    while True:
        try:
            head, ancdata, _flags, _addr = sock.recvmsg(_FRAME_SIZE, socket.CMSG_SPACE(3 * fd_size))
        except OSError:
            head = b""
        fds = []
        for level, typ, data in ancdata:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                fds.extend(array.array("i", data[: len(data) - len(data) % fd_size]))
        if len(head) < _FRAME_SIZE:
            rest = _recv_exact(sock, _FRAME_SIZE - len(head)) if head else None
            if rest is None:
                os._exit(0)  # the builder is gone
            head += rest
        tag, size = struct.unpack(_FRAME, head)
        if tag != _TAG_JOB:
            for fd in fds:
                os.close(fd)
            continue  # a late kill for a child that already ended
        body = _recv_exact(sock, size)
        if body is None or len(fds) != 3:
            os._exit(0)
        pid = os.fork()
        if pid == 0:
            _child(kind, body, fds, sock, tools, server_pid)
        for fd in fds:
            os.close(fd)
        _send_frame(sock, _TAG_STARTED, pid)
        pidfd = os.pidfd_open(pid)
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        poller.register(pidfd, select.POLLIN)
        gone = False
        while True:
            ready = {fd for fd, _ev in poller.poll()}
            if pidfd in ready:
                break
            frame = _recv_exact(sock, _FRAME_SIZE)
            if frame is None:
                gone = True
            if gone or struct.unpack(_FRAME, frame)[0] == _TAG_KILL:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
                if gone:
                    break
        # the child is a zombie or dying: its pgid cannot be reused until it is reaped
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        _pid, status = os.waitpid(pid, 0)
        os.close(pidfd)
        if gone:
            os._exit(0)
        try:
            _send_frame(sock, _TAG_EXITED, status)
        except OSError:
            os._exit(0)


def _child(kind, body, fds, sock, tools, server_pid):
    """In the forked child: take the job's pipes, cut every tie to the server, run the job."""
    import fcntl
    import os
    import signal
    import sys

    try:
        os.setsid()
        prctl = tools.pop("prctl")
        if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != server_pid:
            os._exit(70)
        del prctl
        sock.detach()  # the fd is closed below; the object must not close a reused number
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in fds]
        stdin = os.open(os.devnull, os.O_RDONLY)
        os.dup2(stdin, 0)
        os.dup2(high[0], 1)
        os.dup2(high[1], 2)
        os.dup2(high[2], 3)
        os.closerange(4, 1 << 16)
        _forget_server_state()
        import marshal

        job = marshal.loads(body)
        if kind == "quant":
            _run_quant(job)
        else:
            _run_code(job)
    except BaseException:  # noqa: B036 - nothing may return into the server's loop
        try:
            import traceback

            traceback.print_exc()  # to the job's stderr pipe: the parent shows its tail
            sys.stderr.flush()
        finally:
            os._exit(71)
    os._exit(72)


def _forget_server_state():
    """Drop what only the server needed, so a child sees what a fresh interpreter would.

    ctypes (used for ``prctl``) is unloaded: importing it again runs ``ctypes.dlopen``, which
    the audit hook denies, exactly as in a fresh interpreter.
    """
    import sys

    for name in [m for m in sys.modules if m == "ctypes" or m.startswith("ctypes.")]:
        del sys.modules[name]
    for name in [m for m in sys.modules if m in ("_ctypes",)]:
        del sys.modules[name]
    # (``random`` reseeds itself in a forked child: it registers an at-fork hook)


def _run_code(job):
    """One code check in this child: environment and directory as a fresh interpreter has."""
    import os
    import sys

    cfg = job["cfg"]
    cfg["result_fd"] = 3
    sandbox = cfg["sandbox"]
    os.chdir(sandbox)
    os.environ.clear()
    os.environ.update(job["env"])
    tempfile = sys.modules.get("tempfile")
    if tempfile is not None:
        tempfile.tempdir = None  # recomputed from TMPDIR (the sandbox dir) on first use
    run_check(cfg)  # noqa: F821 - defined by _runner.py in the same program


def _run_quant(job):
    """One quantitative check: trusted sympy code on untrusted text, under limits."""
    import _signal
    import os
    import pickle
    import resource
    import sys

    nonce = job["nonce"]
    _signal.alarm(int(job["wall_s"]) + 2)
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[0])
    base = pages * os.sysconf("SC_PAGE_SIZE")
    cpu = max(1, int(job["cpu_s"] + 0.999))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (base + job["memory_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    denied = (
        "socket.",
        "subprocess.",
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "os.kill",
        "os.killpg",
        "ctypes.",
        "resource.setrlimit",
        "resource.prlimit",
    )
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def report(body):
        data = (nonce + " " + repr(body) + "\n").encode("utf-8", "replace")
        while data:
            data = data[os.write(3, data) :]
        os._exit(0)

    def hook(event, args):
        writing = event == "open" and (
            (isinstance(args[1], str) and any(c in args[1] for c in "wax+"))
            or (isinstance(args[2], int) and args[2] & writes)
        )
        if writing or event.startswith(denied):
            report({"status": "forbidden", "detail": f"{event} during the answer check"})

    sys.addaudithook(hook)
    quant = sys.modules["builder.verify.quant"]
    doc, settings, sample = pickle.loads(job["payload"])
    try:
        verdict = quant.verify_quantitative(doc, settings, sample=sample)
    except MemoryError:
        report({"status": "memory", "detail": "the answer check ran out of memory"})
    report({"status": "verdict", "info": {"verdict": verdict.to_dict()}})


def _entry():
    import marshal
    import sys

    cfg = marshal.loads(bytes.fromhex(sys.argv[2]))
    del sys.argv[1:]
    if cfg.get("role") == "serve":
        _serve(cfg)
    else:
        run_check(cfg)  # noqa: F821 - defined by _runner.py in the same program
