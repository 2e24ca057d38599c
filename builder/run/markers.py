"""Completion markers ``work/_done/<stage>.json``: the fingerprint a stage finished with."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.util.files import atomic_write_text


@dataclass
class Markers:
    """A stage's marker holds its fingerprint and counters.

    The executor calls ``clear`` before a stage writes anything and ``mark`` after its last
    output is in place, so a marker never vouches for the outputs of an unfinished run.
    """

    directory: Path

    def _path(self, stage: str) -> Path:
        return self.directory / f"{stage}.json"

    def read(self, stage: str) -> dict[str, Any]:
        """The marker's contents, or ``{}`` when the stage has not finished."""
        try:
            data = json.loads(self._path(stage).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def fingerprint(self, stage: str) -> str | None:
        """The fingerprint ``stage`` finished with (None: not finished)."""
        value = self.read(stage).get("fingerprint")
        return value if isinstance(value, str) else None

    def done(self, stage: str, fingerprint: str, outputs: Iterable[Path] = ()) -> bool:
        """True when ``stage`` finished with this fingerprint and its outputs still exist."""
        return self.fingerprint(stage) == fingerprint and all(p.exists() for p in outputs)

    def clear(self, stage: str) -> None:
        self._path(stage).unlink(missing_ok=True)

    def mark(self, stage: str, fingerprint: str, **info: Any) -> None:
        atomic_write_text(
            self._path(stage),
            json.dumps({"fingerprint": fingerprint, **info}, sort_keys=True, default=str),
        )
