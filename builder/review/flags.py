"""Curator flags: documents a curator wants out of the corpus, kept in the run directory.

Flags are events appended to ``<run>/flags.jsonl``, one JSON object per line::

    {"id": "<document id>", "action": "flag", "reason": "off topic", "at": "2026-...Z"}
    {"id": "<document id>", "action": "unflag", "reason": "", "at": "2026-...Z"}

Why an append-only log rather than a table rewritten on every click: one ``write`` of whole
lines to a file opened with ``O_APPEND`` (under an exclusive ``flock``, then ``fsync``) is
atomic, costs the same for one flag or a million, and keeps the history (who changed their
mind when). Replaying the log gives the current flags; a torn last line (a process killed
mid-write) is ignored, any other bad line is an error naming the file and line.

The next ``corpus build`` (or ``corpus assemble``) drops flagged documents at assembly:
``drop_flagged`` moves them from the corpus into ``rejected.parquet`` with stage ``review``
and reason ``curator`` (the curator's reason goes to ``detail``), without regenerating
anything. ``flags_fingerprint`` changes whenever the set of flags does, so the assembly stage
reruns after a curator's change and is skipped otherwise.

This module imports only the standard library and Polars: assembly calls it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from builder.errors import InputError

__all__ = [
    "CURATOR_REASON",
    "CURATOR_STAGE",
    "FLAGS_NAME",
    "Flag",
    "append_flags",
    "drop_flagged",
    "flagged_ids",
    "flags_fingerprint",
    "load_flags",
    "valid_document_id",
]

FLAGS_NAME = "flags.jsonl"
CURATOR_STAGE = "review"
CURATOR_REASON = "curator"
#: Longest reason kept (a reason is a note, not a document).
MAX_REASON = 500
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")


def valid_document_id(value: str) -> bool:
    """True for a string shaped like a document id (hashes, slugs): no slashes, no spaces."""
    return bool(_ID.match(value))


@dataclass(frozen=True)
class Flag:
    """The current flag of one document: why, and when it was set."""

    id: str
    reason: str
    at: str


def _path(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / FLAGS_NAME


def _events(path: Path) -> Iterator[dict[str, str]]:
    if not path.exists():
        return
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                event = json.loads(raw)
                if not isinstance(event, dict) or event.get("action") not in ("flag", "unflag"):
                    raise ValueError("not a flag event")
                if not isinstance(event.get("id"), str):
                    raise ValueError("no document id")
            except (ValueError, UnicodeDecodeError) as exc:
                if not raw.endswith(b"\n"):
                    return  # torn last line of a killed writer: never finished, never counted
                raise InputError(
                    f"unreadable flag event: {exc}",
                    file=path,
                    line=number,
                    hint="fix or delete that line (each line is one flag or unflag event)",
                ) from None
            yield event


def load_flags(run_dir: str | os.PathLike[str]) -> dict[str, Flag]:
    """The documents currently flagged in ``run_dir`` (id -> Flag), replaying the log."""
    flags: dict[str, Flag] = {}
    for event in _events(_path(run_dir)):
        if event["action"] == "flag":
            flags[event["id"]] = Flag(
                event["id"], str(event.get("reason") or ""), event.get("at", "")
            )
        else:
            flags.pop(event["id"], None)
    return flags


def flagged_ids(run_dir: str | os.PathLike[str]) -> set[str]:
    """Ids of the documents currently flagged in ``run_dir``."""
    return set(load_flags(run_dir))


def append_flags(
    run_dir: str | os.PathLike[str], ids: Iterable[str], action: str, reason: str = ""
) -> int:
    """Append one ``action`` ("flag" | "unflag") event per id in one atomic write.

    Returns how many events were written. Ids must look like document ids (``ValueError``
    otherwise); a reason is trimmed to one line of at most ``MAX_REASON`` characters.
    """
    if action not in ("flag", "unflag"):
        raise ValueError(f"action must be flag or unflag, not {action!r}")
    reason = " ".join(reason.split())[:MAX_REASON]
    at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines: list[str] = []
    for doc_id in dict.fromkeys(ids):
        if not valid_document_id(doc_id):
            raise ValueError(f"not a document id: {doc_id!r}")
        event = {"id": doc_id, "action": action, "reason": reason, "at": at}
        lines.append(json.dumps(event, ensure_ascii=False) + "\n")
    if not lines:
        return 0
    data = "".join(lines).encode("utf-8")
    path = _path(run_dir)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        with _flock(fd):
            _terminate_torn_line(fd, path)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
    finally:
        os.close(fd)
    return len(lines)


@contextlib.contextmanager
def _flock(fd: int) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _terminate_torn_line(fd: int, path: Path) -> None:
    """After a killed writer, end its torn line so that the next event starts a line."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    with path.open("rb") as fh:
        fh.seek(size - 1)
        if fh.read(1) != b"\n":
            os.write(fd, b"\n")


def flags_fingerprint(run_dir: str | os.PathLike[str]) -> list[list[str]]:
    """The current flags as sorted ``[id, reason]`` pairs: part of the assembly fingerprint,
    so flagging or unflagging reruns assembly and nothing else."""
    return sorted([f.id, f.reason] for f in load_flags(run_dir).values())


def drop_flagged(
    documents: pl.LazyFrame, rejected: pl.LazyFrame, run_dir: str | os.PathLike[str]
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Move flagged documents from ``documents`` to ``rejected`` (stage ``review``, reason
    ``curator``, the curator's reason as ``detail``). Frames are returned unchanged when
    nothing is flagged; flags of ids not in ``documents`` are ignored."""
    flags = load_flags(run_dir)
    if not flags:
        return documents, rejected
    table = pl.LazyFrame(
        {
            "id": [f.id for f in flags.values()],
            "stage": [CURATOR_STAGE] * len(flags),
            "reason": [CURATOR_REASON] * len(flags),
            "detail": [f.reason or None for f in flags.values()],
        },
        schema={"id": pl.String, "stage": pl.String, "reason": pl.String, "detail": pl.String},
    )
    kept = documents.join(table.select("id"), on="id", how="anti")
    dropped = documents.join(table, on="id", how="inner")
    rej_columns = rejected.collect_schema().names()
    dropped = dropped.select(
        [c for c in rej_columns if c in dropped.collect_schema().names()]
        + [c for c in dropped.collect_schema().names() if c not in rej_columns]
    )
    return kept, pl.concat([rejected, dropped], how="diagonal_relaxed")
