"""A directory made once per test session, shared by every pytest-xdist worker.

A reference build that several tests compare against (an uninterrupted ``corpus build``, say)
costs seconds of CPU. As a module-scoped fixture it ties those tests to one worker (the suite
groups a module's tests that share a module fixture), so one worker runs them all while the
other idles at the end of the run. Made here instead, it is built once, by whichever worker
needs it first, under a file lock in the session's shared temporary directory; the tests that
read it are free to run on any worker.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temporary directory every worker of this session sees (the session's own
    directory when the run is not distributed)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def made_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]
) -> Path:
    """``<session dir>/shared-<name>``, filled by ``make(directory)`` the first time any
    worker asks for it; later calls (any worker) wait for the first to finish and reuse it.
    A ``make`` that raises leaves nothing behind, so the next caller tries again (and fails
    the same way, with its own traceback)."""
    base = session_dir(tmp_path_factory)
    root = base / f"shared-{name}"
    done = base / f"shared-{name}.done"
    with open(base / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file is closed
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            try:
                make(root)
            except BaseException:
                shutil.rmtree(root, ignore_errors=True)
                raise
            done.touch()
    return root
