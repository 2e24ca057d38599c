"""The sandbox pool: checks share no state, lost servers are replaced, nothing is orphaned.

Every test uses real fork servers (builder.verify.pool) through the public sandbox API.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil

from builder.parallel import process_map
from builder.settings.filters import VerifySettings
from builder.verify import sandbox_pools, shutdown_pools, verify_document
from builder.verify.sandbox import run_in_sandbox

FAST = VerifySettings(timeout_s=5, memory_mb=256, max_output_kb=16)


def run(solution: str, tests: str, settings: VerifySettings = FAST):
    return run_in_sandbox(textwrap.dedent(solution), textwrap.dedent(tests), settings)


def wait_until(predicate, what: str, timeout: float = 120.0) -> None:
    """Poll for a state (not a sleep that orders events): fail if it never comes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


POISON = """
import builtins, json, math, os, sys, random
builtins.len = lambda obj: 0
builtins.LEAKED = True
math.pi = 3
json.dumps = lambda *a, **k: 'poisoned'
sys.modules['evil'] = sys
sys.path.insert(0, '/tmp/evil')
os.environ['LEAK'] = '1'
open('leftover.txt', 'w').write('x')
os.mkdir('sub')
random.seed(1234)
FIRST = random.random()
def f():
    return FIRST
"""

CLEAN = """
import builtins, json, math, os, sys, random
def test_builtins_are_pristine():
    assert len([1, 2]) == 2
    assert not hasattr(builtins, 'LEAKED')
def test_modules_are_pristine():
    assert math.pi > 3.14
    assert json.dumps([1]) == '[1]'
    assert 'evil' not in sys.modules
    assert '/tmp/evil' not in sys.path
def test_environment_is_fresh():
    assert 'LEAK' not in os.environ
    assert os.environ['HOME'] == os.getcwd()
def test_directory_is_fresh():
    assert os.path.basename(os.getcwd()).startswith('corpus-verify-')
    assert sorted(os.listdir('.')) == ['solution.py', 'test_solution.py']
"""


def test_a_check_cannot_poison_the_next_one():
    first = run(
        POISON,
        "import os\ndef test_poisoned():\n    os.chdir('sub')\n    assert len([1, 2]) == 0\n",
    )
    assert first.status == "passed", first  # the poison took effect inside the first check
    second = run("def f():\n    return 1\n", CLEAN)
    assert second.status == "passed", second
    assert second.passed == 4
    # the same server forked both: the isolation comes from forking, not from a new server
    assert first.server_pid is not None and second.server_pid == first.server_pid
    assert first.pid != second.pid


FRAME_WALK = """
import sys
def f():
    found = []
    frame = sys._getframe()
    while frame is not None:
        for name, value in list(frame.f_locals.items()):
            holder = isinstance(value, dict) and 'prctl' in value
            if name in ('prctl', 'ctypes') or holder:
                found.append(name)
        frame = frame.f_back
    return found
"""


def test_the_servers_own_tools_are_out_of_reach_of_a_check():
    """The server used ctypes (prctl); a check walking its frames finds none of it, and
    importing ctypes again is denied as in a fresh interpreter."""
    res = run(FRAME_WALK, "def test_nothing_found():\n    assert f() == []\n")
    assert res.status == "passed", res
    res = run("import ctypes\ndef f():\n    return 1\n", "assert f()\n")
    assert res.status == "forbidden" and "ctypes" in res.detail


def test_each_check_gets_its_own_random_state():
    """Forked children would all repeat the server's random sequence unless reseeded."""
    code = (
        "import os, random\nos.write(1, repr(random.random()).encode())\ndef f():\n    return 1\n"
    )
    draws = {run(code, "assert f()\n").stdout for _ in range(3)}
    assert len(draws) == 3 and "" not in draws


def test_files_of_one_check_are_gone_before_the_next(tmp_path):
    settings = FAST.model_copy(update={"tmp_dir": str(tmp_path)})
    res = run(
        "open('leftover.txt', 'w').write('x')\ndef f():\n    return 1\n", "assert f()\n", settings
    )
    assert res.status == "passed", res
    assert list(tmp_path.iterdir()) == []


def test_checks_run_in_children_of_a_long_lived_server():
    first = run("def f():\n    return 1\n", "assert f()\n")
    second = run("def f():\n    return 1\n", "assert f()\n")
    assert first.server_pid == second.server_pid
    assert first.server_pid in sandbox_pools(FAST)["code"].server_pids()
    assert gone(first.pid) and gone(second.pid)


def test_a_killed_server_is_replaced():
    first = run("def f():\n    return 1\n", "assert f()\n")
    os.kill(first.server_pid, signal.SIGKILL)
    wait_until(lambda: gone(first.server_pid), "the server to die")
    second = run("def f():\n    return 2\n", "assert f() == 2\n")
    assert second.status == "passed", second
    assert second.server_pid != first.server_pid
    assert first.server_pid not in sandbox_pools(FAST)["code"].server_pids()


def test_a_server_killed_during_a_check_is_replaced_and_the_check_rerun():
    pool = sandbox_pools(FAST)["code"]
    run("def f():\n    return 1\n", "assert f()\n")  # a server exists
    results = []
    settings = FAST.model_copy(update={"timeout_s": 2})
    worker = threading.Thread(
        target=lambda: results.append(
            run("import time\ndef f():\n    time.sleep(300)\n", "assert f()\n", settings)
        )
    )
    worker.start()
    wait_until(lambda: pool.running_checks(), "the check to start")
    (victim_check,) = pool.running_checks()
    victim = psutil.Process(victim_check).ppid()
    os.kill(victim, signal.SIGKILL)
    worker.join(timeout=60)
    assert not worker.is_alive()
    (res,) = results
    # the rerun on a fresh server sleeps too and ends at the wall-clock limit
    assert res.status == "timeout" and "wall-clock" in res.detail
    assert res.server_pid != victim
    wait_until(lambda: gone(victim_check), "the first check process to die")


def test_shutdown_stops_every_server_and_the_next_check_starts_a_new_one():
    first = run("def f():\n    return 1\n", "assert f()\n")
    servers = sandbox_pools(FAST)["code"].server_pids()
    assert first.server_pid in servers
    shutdown_pools()
    for pid in servers:
        wait_until(lambda pid=pid: gone(pid), f"server {pid} to exit")
    assert sandbox_pools(FAST)["code"].server_pids() == []
    second = run("def f():\n    return 1\n", "assert f()\n")
    assert second.status == "passed" and second.server_pid not in servers


LAZY = """
import json, psutil
from builder.settings.filters import VerifySettings
from builder.verify import verify_document
s = VerifySettings(timeout_s=5)
me = psutil.Process()
out = {"after_import": len(me.children())}
verify_document({"kind": "section", "text": "prose"}, s)
out["after_uncheckable"] = len(me.children())
doc = {"kind": "exercise", "exercise_type": "code",
       "structured": {"solution": "def f():\\n    return 1\\n", "tests": "assert f() == 1\\n"}}
out["verdict"] = verify_document(doc, s).verified
out["after_check"] = len(me.children())
out["servers"] = [c.pid for c in me.children()]
print(json.dumps(out))
"""


def test_the_pool_starts_only_when_a_check_needs_it_and_ends_with_the_builder(project_root):
    proc = subprocess.run(
        [sys.executable, "-c", LAZY], cwd=project_root, capture_output=True, text=True, check=True
    )
    out = __import__("json").loads(proc.stdout.strip().splitlines()[-1])
    servers = out.pop("servers")
    assert out == {"after_import": 0, "after_uncheckable": 0, "verdict": True, "after_check": 1}
    # the builder exited normally: its server is stopped with it, nothing is orphaned
    wait_until(lambda: gone(servers[0]), "the server of an exited builder to exit")


QUANT = {
    "id": "q",
    "kind": "exercise",
    "exercise_type": "quantitative",
    "structured": {"problem": "6*7?", "worked_solution": "6 * 7 = 42", "final_answer": "42"},
}


def test_quantitative_checks_run_in_their_own_pool_with_sympy_loaded():
    shutdown_pools()  # a fresh pool: earlier tests in this worker may have grown it
    assert verify_document(QUANT, FAST).verified is True
    quant_pool = sandbox_pools(FAST)["quant"]
    servers = quant_pool.server_pids()
    assert len(servers) == 1
    cmdline = psutil.Process(servers[0]).cmdline()
    assert "-S" not in cmdline  # site-packages (sympy) available, unlike the code server
    assert quant_pool.running_checks() == []


def _check_in_worker(i: int) -> tuple[int, str, int | None]:
    res = run_in_sandbox(
        f"def f():\n    return {i}\n", f"assert f() == {i}\n", VerifySettings(timeout_s=5)
    )
    return os.getpid(), res.status, res.server_pid


def test_spawned_pool_workers_start_their_own_servers_and_leave_none_behind():
    results = list(process_map(_check_in_worker, range(4), workers=2))
    assert sorted(status for _pid, status, _srv in results) == ["passed"] * 4
    servers = {srv for _pid, _status, srv in results}
    assert None not in servers
    assert not servers & set(sandbox_pools(FAST)["code"].server_pids())
    for pid in servers:  # the workers exited: their servers saw end of file and left
        wait_until(lambda pid=pid: gone(pid), f"server {pid} of an exited worker to exit")


def test_a_forked_worker_does_not_share_or_break_the_parents_servers():
    mine = run("def f():\n    return 1\n", "assert f()\n")
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as workers:
        ((child_pid, status, child_server),) = workers.map(_check_in_worker, [7])
    assert status == "passed"
    assert child_pid != os.getpid()
    assert child_server != mine.server_pid  # its own server, not a copy of our socket
    wait_until(lambda: gone(child_server), "the forked worker's server to exit")
    again = run("def f():\n    return 1\n", "assert f()\n")
    assert again.status == "passed" and again.server_pid == mine.server_pid


def test_sequential_checks_start_no_new_interpreter():
    """What makes the pool fast, shown by counting: checks reuse the started server."""
    run("def f():\n    return 1\n", "assert f()\n")
    pool = sandbox_pools(FAST)["code"]
    started = pool.started
    for i in range(5):
        res = run(f"def f():\n    return {i}\n", f"assert f() == {i}\n")
        assert res.status == "passed"
    assert pool.started == started
