"""One build at a time per run directory."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from builder.errors import BuilderError


@contextlib.contextmanager
def run_lock(work: Path) -> Iterator[None]:
    """Hold an exclusive lock on a run while building it (released by the OS on kill -9):
    two builds writing one run's partitions would interleave them."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    work.mkdir(parents=True, exist_ok=True)
    with open(work / ".build.lock", "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuilderError(
                "another `corpus build` is building this run right now",
                file=work.parent,
                hint="wait for it to finish, or pass --run NAME to build into another run",
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
