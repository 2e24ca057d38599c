"""[filters] and [verify] sections: quality filters and execution-based verification."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from builder.settings.base import Section


class FilterSettings(Section):
    """Quality filters on generated documents (``builder.filters``); each drop is recorded."""

    #: drop results cut off by max_tokens (finish_reason "length")
    drop_truncated: bool = True
    #: drop replies that refuse the task ("I'm sorry, but I can't ...")
    drop_refusals: bool = True
    #: extra refusal regexes (case-insensitive), searched in the first 400 characters
    refusal_patterns: list[str] = Field(default_factory=list)
    #: drop documents with fewer cl100k tokens than this (Cosmopedia: 150); 0 disables
    min_tokens: int = Field(150, ge=0)
    #: per-kind override of min_tokens, e.g. {exercise = 60}
    min_tokens_by_kind: dict[str, int] = Field(default_factory=dict)
    #: drop documents whose share of repeated word n-grams is above this; 1 disables
    max_repetition: float = Field(0.3, ge=0, le=1)
    #: n of those word n-grams
    repetition_ngram: int = Field(3, ge=1, le=10)
    #: texts with fewer words than this are not checked for repetition
    repetition_min_words: int = Field(50, ge=1)
    #: expected language (ISO 639-1, CLD2's codes); None disables the check
    language: str | None = "en"
    #: prose shorter than this (code and formulas removed) is not language-checked
    language_min_chars: int = Field(200, ge=1)
    #: the language check reads at most this many characters of prose (CLD2's cost grows
    #: with the text; the first 1,000 characters settle the language of a textbook section)
    language_max_chars: int = Field(1000, ge=1)
    #: drop exercises whose structured output is missing, not an object, or lacks fields
    drop_malformed: bool = True
    # -- quality gates (builder.quality) ---------------------------------------------
    #: drop documents whose relevance (cosine of unit and text embeddings) is below this
    #: (reason off_topic); -1 keeps every document. Default measured in bench/quality.py
    #: (bench/RESULTS.md): the lowest threshold that catches >= 95% of cross-discipline
    #: mismatches with <= 2% of on-topic documents dropped (97% and none of 64).
    min_relevance: float = Field(0.25, ge=-1, le=1)
    #: drop documents the [judge] scored below this (reason low_value); None disables
    min_edu_score: int | None = Field(None, ge=0, le=5)
    #: syntax-check Python fences and run >>> examples of sections (column code_ok)
    check_code: bool = True
    #: drop documents whose code failed those checks (reason code_error)
    drop_code_errors: bool = False

    @field_validator("refusal_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"refusal pattern {pattern!r} is not a regex: {exc}") from None
        return patterns

    @field_validator("min_tokens_by_kind")
    @classmethod
    def _non_negative(cls, value: dict[str, int]) -> dict[str, int]:
        for kind, n in value.items():
            if n < 0:
                raise ValueError(f"min_tokens_by_kind.{kind} must be >= 0")
        return value


class VerifySettings(Section):
    """How exercises are checked (``builder.verify``).

    Code exercises run their reference solution against their tests in a sandboxed
    subprocess with these limits; quantitative answers are compared with sympy against the
    worked solution and, when a model is given, against an independent second sample.
    """

    enabled: bool = True
    #: wall-clock limit of one sandbox run (the process group is killed after it)
    timeout_s: float = Field(10.0, gt=0, le=3600)
    #: CPU-seconds limit (RLIMIT_CPU); default: the wall-clock limit
    cpu_s: float | None = Field(None, gt=0, le=3600)
    #: address-space limit (RLIMIT_AS); exceeding it is a MemoryError -> reason "memory"
    memory_mb: int = Field(512, ge=32)
    #: stdout + stderr the child may print before it is killed (reason "output_limit")
    max_output_kb: int = Field(64, ge=1)
    #: largest file the child may write (RLIMIT_FSIZE)
    max_file_mb: float = Field(1.0, gt=0)
    #: files the child may create in its temporary directory
    max_files: int = Field(64, ge=0)
    #: open file descriptors (RLIMIT_NOFILE)
    max_open_files: int = Field(64, ge=16)
    #: processes/threads of the sandbox user (RLIMIT_NPROC; not enforced for root, where the
    #: audit hook is what blocks fork and subprocesses)
    max_processes: int = Field(32, ge=1)
    #: "auto": own empty network namespace when ``unshare`` works; "require": fail if it
    #: does not; "off": rely on the audit hook alone
    network_namespace: Literal["auto", "require", "off"] = "auto"
    #: drop every capability (setpriv) before the child runs, when running as root
    drop_capabilities: bool = True
    #: run checks as children forked from pre-started sandbox servers (~1-2 ms to start a
    #: check) rather than one fresh interpreter per check (~40-80 ms); same isolation
    sandbox_pool: bool = True
    #: where the per-check empty directories are made (default: /dev/shm when it is a tmpfs
    #: with >= 1 GiB free, else the system temp dir)
    tmp_dir: str | None = None
    #: parallel sandboxes in ``verify_documents`` (default: min(2, CPU count))
    workers: int | None = Field(None, ge=1, le=64)
    #: ask the model (when one is given) for an independent answer to quantitative exercises
    second_sample: bool = True
    second_sample_temperature: float = Field(0.0, ge=0, le=2)
    second_sample_max_tokens: int = Field(512, ge=16)
    #: relative tolerance of numeric answer comparison
    rel_tol: float = Field(1e-6, gt=0, lt=1)
    #: drop documents whose check failed (they go to rejected.parquet with the reason)
    drop_unverified: bool = True
