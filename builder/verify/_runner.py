"""The program that runs inside the sandbox (trusted part; run by ``python -I -S -B``).

It is not imported by the builder: ``builder.verify.sandbox`` joins this file with
``_pytest_shim.py`` and ``_forkserver.py`` into one program, compiles it once and passes the
code object (marshal, hex-encoded) to the interpreter. ``run_check(cfg)`` runs one check with
its configuration (limits, paths, the result fd and a nonce): either in a fresh interpreter,
or in a child forked from a pre-started fork server (``_forkserver.py``). It imports only the
standard library, so it works under ``-I -S`` (no site-packages).

Order of events, before any untrusted code runs:

1. read the configuration (the caller has already forgotten ``sys.argv``);
2. set resource limits (soft = hard, so they cannot be raised again);
3. install an audit hook (PEP 578) that ends the process with a ``forbidden`` result on
   sockets, subprocesses, fork/exec, signals to other processes, ctypes, rlimit changes,
   heap introspection, and file access outside the sandbox directory (reading the standard
   library is allowed). Audit hooks cannot be removed by the code they guard.

Then it executes ``solution.py`` and ``test_solution.py`` (written by the parent into the
sandbox directory), runs pytest-style ``test_*`` functions, ``Test*`` classes and
``unittest.TestCase`` classes, and writes exactly one result line, ``<nonce> <dict repr>``,
to a pipe the parent opened for it (not stdout, which the untrusted code owns). A minimal
``pytest`` stand-in (raises, approx, mark.parametrize/skip/xfail, fixture, fail, skip) is
provided because generated tests often import pytest, which the sandbox does not have.
"""

import os
import sys


def run_check(cfg) -> None:  # noqa: C901 - one linear script, kept in one frame on purpose
    """Run one check described by ``cfg`` in this process; ends it with ``os._exit``."""
    import _thread
    import resource
    import types

    nonce = cfg["nonce"]
    result_fd = cfg["result_fd"]
    sandbox = os.path.realpath(cfg["sandbox"])
    max_detail = cfg.get("max_detail", 2000)

    write = os.write
    hard_exit = os._exit
    dumps = repr  # the parent reads the line with ast.literal_eval (json costs 8 ms to import)
    report_lock = _thread.allocate_lock()

    def report(status, detail="", **extra):
        """Write the one result line and end the process (threads and all)."""
        if not report_lock.acquire(False):
            hard_exit(3)  # another thread is reporting; it will end the process
        body = {"status": status, "detail": str(detail)[:max_detail]}
        body.update(extra)
        data = (nonce + " " + dumps(body) + "\n").encode("utf-8", "replace")
        try:
            while data:
                data = data[write(result_fd, data) :]
        except OSError:
            pass
        hard_exit(0)

    # -- 2. resource limits -------------------------------------------------------------
    def limit(which, value):
        value = int(value)
        _soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY and hard < value:
            value = hard
        resource.setrlimit(which, (value, value))

    try:
        import _signal

        # SIGALRM ends the process even if the parent died without killing it
        _signal.alarm(int(cfg["wall_s"]) + 2)
        cpu = max(1, int(cfg["cpu_s"] + 0.999))
        _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
        # soft limit -> SIGXCPU (the parent reads it as a timeout); hard limit -> SIGKILL
        resource.setrlimit(
            resource.RLIMIT_CPU,
            (cpu, cpu + 1 if hard == resource.RLIM_INFINITY else min(cpu + 1, hard)),
        )
        limit(resource.RLIMIT_FSIZE, cfg["fsize_bytes"])
        limit(resource.RLIMIT_NOFILE, cfg["nofile"])
        limit(resource.RLIMIT_NPROC, cfg["nproc"])
        limit(resource.RLIMIT_CORE, 0)
        limit(resource.RLIMIT_AS, cfg["memory_bytes"])
    except (OSError, ValueError) as exc:
        report("sandbox_error", f"could not set resource limits: {exc!r}")

    if cfg.get("mode") == "probe":
        # Trusted self-check used by tests and diagnostics: what the sandbox looks like.
        import socket

        info = {
            "uid": os.getuid(),
            "limits": {
                name: resource.getrlimit(getattr(resource, name))
                for name in ("RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_NOFILE")
            },
            "interfaces": [name for _i, name in socket.if_nameindex()],
            "cwd": os.getcwd(),
            "env": dict(os.environ),
        }
        try:
            with open("/proc/self/status") as f:
                info["cap_eff"] = [ln.split()[1] for ln in f if ln.startswith("CapEff")][0]
        except OSError:
            info["cap_eff"] = None
        port = cfg.get("probe_port")
        if port:
            s = socket.socket()
            s.settimeout(2)
            try:
                s.connect(("127.0.0.1", port))
                info["connect"] = "connected"
            except OSError as exc:
                info["connect"] = type(exc).__name__
            finally:
                s.close()
        report("probe", "", info=info)

    # -- 3. audit hook --------------------------------------------------------------------
    realpath = os.path.realpath
    isabs = os.path.isabs
    join = os.path.join
    getcwd = os.getcwd
    fsdecode = os.fsdecode
    fspath = os.fspath
    get_ident = _thread.get_ident
    sep = os.sep
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    creat = os.O_CREAT
    path_like = os.PathLike
    unix_family = 1  # socket.AF_UNIX on Linux (importing socket here would cost startup time)

    def under(path, root):
        return path == root or path.startswith(root.rstrip(sep) + sep)

    read_roots = [sandbox, *_resolved_roots(tuple(sys.path) + tuple(cfg["extra_read_roots"]))]
    # the interpreter's own site-packages sit inside its stdlib directory: not readable
    hidden_roots = [join(root, name) for root in read_roots[1:] for name in ("site-packages",)]
    read_files = {"/dev/null", "/dev/urandom", "/dev/zero"}
    write_files = {"/dev/null"}
    counters = {"created": 0}
    max_files = cfg["max_files"]
    inside = set()  # thread ids currently inside the hook (realpath must not recurse)

    denied_prefixes = (
        "socket.",
        "subprocess.",
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "os.forkpty",
        "os.kill",
        "os.killpg",
        "os.startfile",
        "pty.",
        "ctypes.",
        "resource.setrlimit",
        "resource.prlimit",
        "sys._current_frames",
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
        "syslog.",
        "sqlite3.enable_load_extension",
        "sqlite3.load_extension",
        "webbrowser.",
        "urllib.",
        "http.",
        "ftplib.",
        "smtplib.",
        "imaplib.",
        "poplib.",
        "nntplib.",
        "telnetlib.",
    )
    write_events = {
        "os.remove",
        "os.rmdir",
        "os.mkdir",
        "os.rename",
        "os.chmod",
        "os.chown",
        "os.truncate",
        "os.utime",
        "os.link",
        "os.symlink",
        "os.setxattr",
        "os.removexattr",
        "os.chflags",
        "os.lchflags",
        "shutil.copyfile",
        "shutil.copymode",
        "shutil.copystat",
        "shutil.copytree",
        "shutil.chown",
        "shutil.move",
        "shutil.rmtree",
        "shutil.make_archive",
        "shutil.unpack_archive",
        "tempfile.mkstemp",
        "tempfile.mkdtemp",
    }
    read_events = {"os.listdir", "os.scandir", "os.chdir", "glob.glob", "os.getxattr"}
    ok_events = {"compile", "exec", "import", "marshal.loads", "object.__getattr__"}

    def show(args):
        parts = []
        for a in args[:3]:
            if isinstance(a, str | bytes | int | float | tuple) or a is None:
                parts.append(repr(a)[:200])
            else:
                parts.append(type(a).__name__)
        return "(" + ", ".join(parts) + ")"

    def deny(event, args, why=""):
        report("forbidden", f"{event}{show(args)}{': ' + why if why else ''}", event=event)

    def resolve(path):
        if isinstance(path, bytes):
            path = fsdecode(path)
        elif not isinstance(path, str):
            path = fspath(path)
            if isinstance(path, bytes):
                path = fsdecode(path)
        if not isabs(path):
            path = join(getcwd(), path)
        return realpath(path)

    def check_path(event, args, path, writing):
        if path is None or isinstance(path, int):
            # an already-open fd: only the standard streams may be re-opened by number
            if isinstance(path, int) and path > 2 and event == "open":
                deny(event, args, "opening a file descriptor by number")
            return
        real = resolve(path)
        if writing:
            if real in write_files:
                return
            if not under(real, sandbox):
                deny(event, args, "writes are allowed only inside the sandbox directory")
        else:
            if real in read_files:
                return
            for root in hidden_roots:
                if under(real, root):
                    deny(event, args, "third-party packages are not readable in the sandbox")
            for root in read_roots:
                if under(real, root):
                    return
            deny(event, args, "reads are allowed only inside the sandbox and the stdlib")

    def hook(event, args):
        if event in ok_events:
            if event == "import" and args[0] == "_posixsubprocess":
                deny("subprocess spawn", args, "a fresh copy of _posixsubprocess was imported")
            return
        if event == "socket.__new__" and len(args) > 1 and args[1] == unix_family:
            return  # asyncio's self-pipe is an AF_UNIX socketpair; connect/bind stay denied
        if event.startswith(denied_prefixes):
            deny(event, args)
        me = get_ident()
        if me in inside:
            return
        inside.add(me)
        try:
            if event == "open":
                path, mode, flags = args
                writing = False
                if isinstance(mode, str) and any(c in mode for c in "wax+"):
                    writing = True
                if isinstance(flags, int) and flags & write_flags:
                    writing = True
                check_path(event, args, path, writing)
                if writing and isinstance(flags, int) and flags & creat:
                    counters["created"] += 1
                    if counters["created"] > max_files:
                        deny(event, args, f"more than {max_files} files created")
            elif event in write_events:
                for a in args[:2]:
                    if isinstance(a, str | bytes | path_like):
                        check_path(event, args, a, True)
                if event in ("os.mkdir", "tempfile.mkstemp", "tempfile.mkdtemp"):
                    counters["created"] += 1
                    if counters["created"] > max_files:
                        deny(event, args, f"more than {max_files} files created")
            elif event in read_events:
                path = args[0] if args else None
                if event == "os.chdir":
                    check_path(event, args, path, True)
                else:
                    check_path(event, args, "." if path is None else path, False)
            elif event == "sqlite3.connect":
                db = args[0] if args else None
                if db not in (":memory:", "", b":memory:", b""):
                    check_path(event, args, db, True)
        finally:
            inside.discard(me)

    emergency = [bytearray(1 << 20)]  # freed on MemoryError so the report can be built

    # _posixsubprocess.fork_exec spawns processes without an audit event (3.11): load the
    # module now and replace it by a function that reports; a later fresh import is denied.
    import _posixsubprocess

    def fork_exec(*_args, **_kwargs):
        deny("subprocess spawn", (), "_posixsubprocess.fork_exec")

    _posixsubprocess.fork_exec = fork_exec

    sys.path.insert(0, sandbox)
    os.chdir(sandbox)
    sys.addaudithook(hook)

    # -- pytest stand-in ------------------------------------------------------------------
    pytest_mod = types.ModuleType("pytest")
    exec(_shim_code(), pytest_mod.__dict__)
    sys.modules["pytest"] = pytest_mod
    Skipped = pytest_mod.Skipped

    code_files = ("solution.py", "test_solution.py")

    def where(exc):
        """The innermost line of the solution or the tests that the exception passed."""
        import traceback

        frames = traceback.extract_tb(exc.__traceback__)
        for fr in reversed(frames):
            if fr.filename in code_files:
                line = (fr.line or "").strip()
                return f"{fr.filename}:{fr.lineno}: {line}"
        return ""

    def describe(exc, test=None):
        name = type(exc).__name__
        msg = str(exc)
        text = f"{name}: {msg}" if msg else name
        loc = where(exc)
        if loc:
            text = f"{loc}\n{text}"
        if test:
            text = f"{test}: {text}"
        return text

    def classify(exc):
        """Map an exception raised by untrusted code to a result status."""
        if isinstance(exc, MemoryError):
            return "memory"
        if isinstance(exc, OSError) and exc.errno == 27:  # EFBIG: RLIMIT_FSIZE
            return "output_limit"
        if isinstance(exc, SystemExit | KeyboardInterrupt):
            return "crashed"
        if isinstance(exc, ImportError) and not isinstance(exc, ModuleNotFoundError):
            return "tests_failed"
        if isinstance(exc, ModuleNotFoundError) and exc.name not in (None, "solution"):
            return "crashed"
        return "tests_failed"

    def fail_from(exc, test=None):
        status = classify(exc)
        if status == "memory":
            emergency.clear()
            return status, "MemoryError: the memory limit was exceeded" + (
                f" in {test}" if test else ""
            )
        detail = describe(exc, test)
        if status == "output_limit":
            detail += " (file size limit)"
        elif isinstance(exc, ModuleNotFoundError) and status == "crashed":
            detail += (
                " (the sandbox has the Python standard library, pytest basics, and the"
                " solution as module 'solution' or 'main')"
            )
        elif isinstance(exc, SystemExit):
            detail = f"{test + ': ' if test else ''}SystemExit({exc.code!r}) raised"
        return status, detail

    def short_tb(tb_text):
        """``file:line: code`` of the innermost solution/test frame, then the error line."""
        lines = tb_text.strip().splitlines()
        loc = ""
        for i, ln in enumerate(lines):
            stripped = ln.strip()
            for name in code_files:
                if stripped.startswith(f'File "{name}", line '):
                    lineno = stripped.split(", line ")[1].split(",")[0]
                    code = lines[i + 1].strip() if i + 1 < len(lines) else ""
                    loc = f"{name}:{lineno}: {code}"
        return f"{loc}\n{lines[-1] if lines else ''}".strip()

    # -- run the solution -----------------------------------------------------------------
    sol_mod = types.ModuleType("solution")
    sol_mod.__file__ = join(sandbox, "solution.py")
    sys.modules["solution"] = sol_mod
    sys.modules["main"] = sol_mod
    failure = None
    try:
        with open("solution.py", encoding="utf-8") as f:
            src = f.read()
        exec(compile(src, "solution.py", "exec", dont_inherit=True), sol_mod.__dict__)
    except SyntaxError as exc:
        report("syntax_error", f"solution.py:{exc.lineno}: {exc.msg}")
    except BaseException as exc:  # noqa: B036 - untrusted code may raise anything
        status, detail = fail_from(exc)
        failure = ("crashed" if status == "tests_failed" else status, "solution: " + detail)
    if failure is not None:
        report(*failure)

    # -- run the tests --------------------------------------------------------------------
    test_mod = types.ModuleType("test_solution")
    test_mod.__file__ = join(sandbox, "test_solution.py")
    for key, value in sol_mod.__dict__.items():
        if not key.startswith("__"):
            test_mod.__dict__[key] = value
    sys.modules["test_solution"] = test_mod
    try:
        with open("test_solution.py", encoding="utf-8") as f:
            src = f.read()
        exec(compile(src, "test_solution.py", "exec", dont_inherit=True), test_mod.__dict__)
    except SyntaxError as exc:
        report("syntax_error", f"test_solution.py:{exc.lineno}: {exc.msg}")
    except Skipped as exc:
        report("no_tests", f"the tests skipped themselves: {exc}")
    except BaseException as exc:  # noqa: B036
        failure = fail_from(exc)
    if failure is not None:
        report(*failure)

    fixtures = pytest_mod._FIXTURES
    # module-level asserts that all held count as one test
    passed = 1 if cfg.get("toplevel_checks") else 0
    failed = 0
    skipped = 0
    first_failure = None

    def call_with_fixtures(fn, name, params):
        code = getattr(fn, "__code__", None)
        if code is not None and code.co_argcount + code.co_kwonlyargcount == len(params) == 0:
            return fn()  # the common case, without importing inspect (6 ms)
        import inspect

        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return fn(**params)
        kwargs = dict(params)
        finalizers = []
        for pname, p in sig.parameters.items():
            if pname in kwargs or p.default is not inspect.Parameter.empty:
                continue
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if pname == "tmp_path":
                import pathlib
                import tempfile

                kwargs[pname] = pathlib.Path(tempfile.mkdtemp(dir=sandbox))
            elif pname in fixtures:
                value = fixtures[pname]()
                if isinstance(value, types.GeneratorType):
                    gen = value
                    value = next(gen)
                    finalizers.append(gen)
                kwargs[pname] = value
            else:
                raise pytest_mod.FixtureMissing(
                    f"{name} needs fixture {pname!r}, which the sandbox does not provide"
                )
        try:
            return fn(**kwargs)
        finally:
            for gen in reversed(finalizers):
                for _ in gen:
                    pass

    def run_one(label, fn, params):
        nonlocal passed, failed, skipped, first_failure
        outcome = None
        try:
            call_with_fixtures(fn, label, params)
        except Skipped:
            skipped += 1
            return
        except BaseException as exc:  # noqa: B036
            if getattr(fn, "_xfail", False) and not isinstance(exc, MemoryError):
                skipped += 1
                return
            outcome = fail_from(exc, label)
            if isinstance(exc, pytest_mod.FixtureMissing):
                outcome = ("crashed", outcome[1])
        if outcome is None:
            passed += 1
            return
        failed += 1
        if first_failure is None:
            first_failure = outcome
        if outcome[0] in ("memory", "crashed", "output_limit"):
            report(outcome[0], outcome[1], passed=passed, failed=failed)

    def expand(label, fn):
        cases = [({}, label)]
        for argnames, argvalues, ids in reversed(getattr(fn, "_parametrize", [])):
            names = (
                [n.strip() for n in argnames.split(",")] if isinstance(argnames, str) else argnames
            )
            new = []
            for params, lab in cases:
                for i, values in enumerate(argvalues):
                    if len(names) == 1:
                        values = (values,)
                    case_id = ids[i] if ids and i < len(ids) else str(i)
                    merged = dict(params)
                    merged.update(dict(zip(names, values, strict=False)))
                    new.append((merged, f"{lab}[{case_id}]"))
            cases = new
        return cases

    items = list(test_mod.__dict__.items())
    for name, obj in items:
        if name.startswith("test") and isinstance(obj, types.FunctionType):
            if getattr(obj, "__module__", None) != "test_solution":
                continue
            if getattr(obj, "_skip", False):
                skipped += 1
                continue
            for params, label in expand(name, obj):
                run_one(label, obj, params)
        elif isinstance(obj, type) and getattr(obj, "__module__", None) == "test_solution":
            unittest = sys.modules.get("unittest")
            if unittest is not None and issubclass(obj, unittest.TestCase):
                suite = unittest.defaultTestLoader.loadTestsFromTestCase(obj)
                res = unittest.TestResult()
                try:
                    suite.run(res)
                except BaseException as exc:  # noqa: B036
                    status, detail = fail_from(exc, name)
                    report(status, detail, passed=passed, failed=failed + 1)
                passed += res.testsRun - len(res.failures) - len(res.errors) - len(res.skipped)
                skipped += len(res.skipped)
                bad = res.failures + res.errors
                failed += len(bad)
                if bad and first_failure is None:
                    case, tb_text = bad[0]
                    first_failure = ("tests_failed", f"{case.id()}: {short_tb(tb_text)}")
            elif name.startswith("Test"):
                for meth in [m for m in dir(obj) if m.startswith("test")]:

                    def bound(meth=meth, cls=obj, **kw):
                        inst = cls()
                        if hasattr(inst, "setup_method"):
                            inst.setup_method(getattr(inst, meth))
                        try:
                            getattr(inst, meth)(**kw)
                        finally:
                            if hasattr(inst, "teardown_method"):
                                inst.teardown_method(getattr(inst, meth))

                    func = getattr(obj, meth)
                    bound._parametrize = getattr(func, "_parametrize", [])
                    bound._xfail = getattr(func, "_xfail", False)
                    if getattr(func, "_skip", False):
                        skipped += 1
                        continue
                    for params, label in expand(f"{name}.{meth}", bound):
                        run_one(label, bound, params)

    if first_failure is not None:
        report(first_failure[0], first_failure[1], passed=passed, failed=failed)
    if passed == 0:
        report("no_tests", "no test ran" + (f" ({skipped} skipped)" if skipped else ""))
    report("passed", "", passed=passed, failed=0, skipped=skipped)


_SHIM_CODE = []


def _shim_code():
    """The pytest stand-in compiled once per process (a fork server compiles it for all)."""
    if not _SHIM_CODE:
        # _PYTEST_SHIM (the text of _pytest_shim.py) is defined by the program sandbox.py builds
        _SHIM_CODE.append(compile(_PYTEST_SHIM, "<pytest-shim>", "exec"))  # noqa: F821
    return _SHIM_CODE[0]


_ROOTS = {}


def _resolved_roots(entries):
    """``realpath`` of the readable roots; a fork server resolves them once for all checks
    (two dozen ``lstat`` calls that cost a cold child ~1 ms)."""
    if entries not in _ROOTS:
        _ROOTS[entries] = [os.path.realpath(entry) for entry in entries if entry]
    return _ROOTS[entries]
