"""Progress of a run: a live bar on a terminal, plain periodic log lines otherwise.

The engine calls ``update(stats)`` after every batch of results (cheap: it only redraws a
few times a second). On a TTY a rich progress bar shows done / cached / failed, requests being
served and queued, the concurrency window and 429s of the last minute, tokens per second, cost
and ETA; elsewhere (CI, pipes, log files) one line goes to stderr every ``interval_s`` seconds
and at the end (unless it would repeat the last one), so logs stay readable. Log lines also
say why the window last moved, when that changed; the bar says it too.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Protocol, TextIO


@dataclass
class Snapshot:
    """What a progress display shows (a copy of the run's counters)."""

    done: int = 0  # results yielded (any status, cache hits included)
    cached: int = 0
    failed: int = 0
    in_flight: int = 0  # sent to an endpoint, not answered yet
    queued: int = 0  # admitted, waiting for a slot, a rate limit or a retry delay
    completion_tokens: int = 0
    cost: float = 0.0
    total: int | None = None
    window: int | None = None  # requests the endpoints' windows allow in flight
    refused_last_minute: int = 0  # 429 answers in the last minute
    window_reason: str = ""  # why a window last moved


class Progress(Protocol):
    def start(self, total: int | None) -> None: ...
    def update(self, snap: Snapshot) -> None: ...
    def close(self, snap: Snapshot) -> None: ...


class NoProgress:
    """Silence (``progress=False``)."""

    def start(self, total: int | None) -> None:
        pass

    def update(self, snap: Snapshot) -> None:
        pass

    def close(self, snap: Snapshot) -> None:
        pass


def _eta(snap: Snapshot, elapsed: float, fresh_start: int) -> str:
    if not snap.total or snap.done <= fresh_start or elapsed <= 0:
        return "?"
    rate = (snap.done - fresh_start) / elapsed
    left = max(0, snap.total - snap.done) / rate if rate > 0 else 0
    if left >= 3600:
        return f"{left / 3600:.1f}h"
    if left >= 60:
        return f"{left / 60:.1f}m"
    return f"{left:.0f}s"


class LogProgress:
    """One line on ``stream`` every ``interval_s`` seconds and at the end."""

    def __init__(self, label: str = "llm", interval_s: float = 10.0, stream: TextIO | None = None):
        self.label = label
        self.interval_s = interval_s
        self.stream = stream or sys.stderr
        self._t0 = time.monotonic()
        self._last = self._t0
        self._total: int | None = None
        self._printed: tuple[Any, ...] | None = None  # counters of the last line printed
        self._reason = ""

    def start(self, total: int | None) -> None:
        self._t0 = self._last = time.monotonic()
        self._total = total
        self._printed = None

    def _line(self, snap: Snapshot) -> str:
        elapsed = time.monotonic() - self._t0
        tps = snap.completion_tokens / elapsed if elapsed > 0 else 0.0
        total = f"/{snap.total}" if snap.total is not None else ""
        line = (
            f"{self.label}: {snap.done}{total} done ({snap.cached} cached, {snap.failed} failed),"
            f" {snap.in_flight} sending, {snap.queued} queued"
        )
        if snap.window is not None:
            line += f", window {snap.window}, {snap.refused_last_minute} 429s in the last minute"
        line += f", {tps:.0f} tok/s, ${snap.cost:.4f}, ETA {_eta(snap, elapsed, snap.cached)}"
        if snap.window_reason and snap.window_reason != self._reason:
            self._reason = snap.window_reason
            line += f" [window: {snap.window_reason}]"
        return line

    def _print(self, snap: Snapshot) -> None:
        key = (snap.done, snap.cached, snap.failed, snap.in_flight, snap.queued, snap.window)
        if key == self._printed:
            return  # the same line again says nothing (e.g. an update then the close)
        self._printed = key
        print(self._line(snap), file=self.stream, flush=True)

    def update(self, snap: Snapshot) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self._print(snap)

    def close(self, snap: Snapshot) -> None:
        if snap.done or snap.failed:
            self._print(snap)


class BarProgress:
    """A rich progress bar on stderr (TTY only)."""

    def __init__(self, label: str = "llm") -> None:
        self.label = label
        self._bar: Any = None
        self._task: Any = None
        self._t0 = time.monotonic()
        self._last = 0.0

    def start(self, total: int | None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._t0 = time.monotonic()
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(self.label, total=total, detail="")

    def update(self, snap: Snapshot, *, force: bool = False) -> None:
        now = time.monotonic()
        if self._bar is None or (not force and now - self._last < 0.2):
            return
        self._last = now
        elapsed = now - self._t0
        tps = snap.completion_tokens / elapsed if elapsed > 0 else 0.0
        detail = (
            f"cached {snap.cached}  failed {snap.failed}  sending {snap.in_flight}  "
            f"queued {snap.queued}  "
        )
        if snap.window is not None:
            detail += f"window {snap.window}  429s/min {snap.refused_last_minute}  "
        detail += f"{tps:.0f} tok/s  ${snap.cost:.4f}"
        if snap.window_reason:  # why the window last moved (escaped: it is not rich markup)
            from rich.markup import escape

            detail += f"  ({escape(snap.window_reason)})"
        self._bar.update(self._task, completed=snap.done, total=snap.total, detail=detail)

    def close(self, snap: Snapshot) -> None:
        if self._bar is not None:
            self.update(snap, force=True)
            self._bar.stop()
            self._bar = None


def make_progress(progress: Any, interval_s: float = 10.0, label: str = "llm") -> Progress:
    """``None``: bar on a TTY, log lines otherwise; ``False``: silent; ``True``: bar or log
    lines as for None; a ``Progress`` object is used as is."""
    if progress is False:
        return NoProgress()
    if progress is None or progress is True:
        if sys.stderr.isatty():
            return BarProgress(label)
        return LogProgress(label, interval_s)
    return progress
