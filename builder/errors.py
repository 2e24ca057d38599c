"""The errors the library raises for user mistakes.

Only the CLI turns these into one clear line (``file:line: message``) and exit code 2;
library callers catch them as ordinary exceptions. Anything that is not a ``BuilderError``
is a bug and is shown with a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    """One problem found in a user file: where it is and what to do about it."""

    message: str
    file: str | Path | None = None
    line: int | None = None
    hint: str | None = None

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "
        text = f"{where}{self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text


class BuilderError(Exception):
    """Base class of every error caused by user input, configuration or environment."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.problem = Problem(message, file, line, hint)
        super().__init__(str(self.problem))

    @property
    def problems(self) -> list[Problem]:
        return [self.problem]


class ValidationError(BuilderError):
    """Several problems found at once (e.g. every error in a taxonomy)."""

    def __init__(self, problems: Iterable[Problem], summary: str | None = None) -> None:
        self._problems = list(problems)
        if not self._problems:
            raise ValueError("ValidationError needs at least one problem")
        first = self._problems[0]
        super().__init__(first.message, file=first.file, line=first.line, hint=first.hint)
        self.summary = summary or f"{len(self._problems)} problem(s) found"
        self.args = ("\n".join(str(p) for p in self._problems),)

    @property
    def problems(self) -> list[Problem]:
        return list(self._problems)

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self._problems)


class ConfigError(BuilderError):
    """A bad value or unknown key in corpus.toml, a flag or an environment variable."""


class TaxonomyError(BuilderError):
    """A taxonomy that cannot be loaded or an edit that would break it."""


class TemplateError(BuilderError):
    """A template that cannot be parsed or rendered."""


class InputError(BuilderError):
    """A data file (CSV, JSON, JSONL, Parquet) that cannot be read as asked."""


class LLMError(BuilderError):
    """The LLM endpoint cannot be used at all (as opposed to one request failing)."""


class AuthError(LLMError):
    """The endpoint rejected the credentials: fail fast, never retry."""


class QuotaError(LLMError):
    """The account is out of quota or credit: fail fast, never retry."""


class CacheError(BuilderError):
    """The LLM cache is corrupt, locked or from an incompatible version."""


class BudgetExceeded(BuilderError):
    """The next request would pass --max-cost. The run stopped cleanly and can resume."""

    exit_code = 3


class Interrupted(BuilderError):
    """Ctrl-C: the run stopped cleanly after saving finished work."""

    exit_code = 130
