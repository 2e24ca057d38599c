"""Writing files so that a crash or Ctrl-C never leaves a half-written one."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

__all__ = ["atomic_write_text"]


def _new_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` via a temp file in the same directory + ``os.replace``.

    Readers see either the old file or the new one, never a mix. An existing file's
    permission bits are kept; a symlink is written through (its target is replaced), and a
    FIFO or device (``-o /dev/stdout``) is written to directly.
    """
    path = Path(path)
    if path.is_symlink():
        # Write through a link (as `>` would) instead of replacing the link with a file.
        path = path.resolve()
    if path.exists() and not path.is_file():
        # A FIFO, a device or /dev/stdout: rename cannot replace it, so write straight in.
        with path.open("w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        except FileNotFoundError:
            os.chmod(tmp, _new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
