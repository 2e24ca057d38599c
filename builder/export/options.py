"""What an export is asked to do: the format, the rows, the split and the reasoning mode.

``ExportOptions`` is checked once, before any file is read, so a bad combination (a section
asked for in a chat format, a test fraction without ``--split-by``) is one clear error and
nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from builder.errors import ConfigError

#: Export formats (``builder.export.formats.FORMATS`` builds their rows).
FORMAT_NAMES: tuple[str, ...] = ("chat", "alpaca", "sharegpt", "text")
#: ``--reasoning``: ``include`` puts ``<think>REASONING</think>`` before the answer,
#: ``drop`` leaves it out, ``as-field`` keeps it in its own ``reasoning`` column.
REASONING_MODES: tuple[str, ...] = ("include", "drop", "as-field")
#: Kinds each format can turn into rows. Instruction formats need a question and an answer,
#: which exercises (and solutions that carry their exercise) have and sections do not.
FORMAT_KINDS: dict[str, frozenset[str]] = {
    "chat": frozenset({"exercise", "solution"}),
    "alpaca": frozenset({"exercise", "solution"}),
    "sharegpt": frozenset({"exercise", "solution"}),
    "text": frozenset({"section", "exercise", "solution"}),
}
DEFAULT_KINDS: dict[str, tuple[str, ...]] = {
    "chat": ("exercise",),
    "alpaca": ("exercise",),
    "sharegpt": ("exercise",),
    "text": ("section",),
}
#: Named ``--split-level`` values and the depth of ``taxonomy_path`` they cut at;
#: ``node`` is the document's own node (its whole path).
SPLIT_LEVELS: dict[str, int | None] = {"discipline": 1, "subject": 2, "node": None}


@dataclass(frozen=True)
class ExportOptions:
    """One export (see ``corpus export --help`` for the meaning of each field)."""

    format: str
    kinds: tuple[str, ...] = ()
    verified_only: bool = False
    min_edu_score: float | None = None
    split_by: str | None = None
    split_level: str = "node"
    test_fraction: float = 0.1
    seed: int = 0
    reasoning: str = "as-field"
    jsonl: bool = False
    system: str | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMAT_NAMES:
            raise ConfigError(
                f"unknown export format {self.format!r}",
                hint=f"use one of {', '.join(FORMAT_NAMES)}",
            )
        if self.reasoning not in REASONING_MODES:
            raise ConfigError(
                f"unknown reasoning mode {self.reasoning!r}",
                hint=f"use one of {', '.join(REASONING_MODES)}",
            )
        if not self.kinds:
            object.__setattr__(self, "kinds", DEFAULT_KINDS[self.format])
        bad = sorted(set(self.kinds) - FORMAT_KINDS[self.format])
        if bad:
            raise ConfigError(
                f"format {self.format} cannot export kind(s) {', '.join(bad)}",
                hint=(
                    f"{self.format} takes {', '.join(sorted(FORMAT_KINDS[self.format]))}; "
                    "sections have no question and answer, export them with --format text"
                ),
            )
        if self.split_by not in (None, "node"):
            raise ConfigError(f"unknown --split-by {self.split_by!r}", hint="use --split-by node")
        self.split_depth()  # validates split_level
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(
                f"--test-fraction must be between 0 and 1 (exclusive), got {self.test_fraction:g}"
            )
        if self.system is not None and self.format not in ("chat", "sharegpt"):
            raise ConfigError(
                "--system applies to the chat and sharegpt formats only",
                hint=f"drop --system for --format {self.format}",
            )

    @property
    def splits(self) -> tuple[str, ...]:
        """Split names this export may write (empty ones are left out at the end)."""
        return ("train", "test") if self.split_by else ("train",)

    def split_depth(self) -> int | None:
        """How many ``taxonomy_path`` components name a split node (None: the whole path)."""
        level = self.split_level
        if level in SPLIT_LEVELS:
            return SPLIT_LEVELS[level]
        try:
            depth = int(level)
        except ValueError:
            depth = 0
        if depth < 1:
            raise ConfigError(
                f"unknown --split-level {level!r}",
                hint=f"use {', '.join(SPLIT_LEVELS)} or a path depth such as 2",
            )
        return depth

    def describe(self) -> dict[str, Any]:
        """The options as plain data (recorded in export.json and the card)."""
        return {
            "format": self.format,
            "kinds": list(self.kinds),
            "verified_only": self.verified_only,
            "min_edu_score": self.min_edu_score,
            "split_by": self.split_by,
            "split_level": self.split_level if self.split_by else None,
            "test_fraction": self.test_fraction if self.split_by else None,
            "seed": self.seed,
            "reasoning": self.reasoning,
            "file_format": "jsonl" if self.jsonl else "parquet",
            "system": self.system,
        }
