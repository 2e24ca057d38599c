"""A worker whose driver died while it was starting exits instead of waiting forever."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.project import ROOT

SCRIPT = (
    "import os, sys\n"
    "from builder.run.pool import die_with_parent\n"
    "die_with_parent(int(sys.argv[1]))\n"
    "print('running')\n"
)


def _start(parent: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(parent)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_a_worker_whose_driver_is_gone_exits_at_once() -> None:
    gone = _start(os.getpid() + 10_000_000)  # not the worker's parent: the driver is gone
    assert gone.returncode == 0 and gone.stdout == ""


def test_a_worker_whose_driver_lives_runs() -> None:
    alive = _start(os.getpid())  # the worker's parent is this process
    assert alive.returncode == 0 and alive.stdout == "running\n"
