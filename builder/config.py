"""One typed configuration, read from ``corpus.toml``.

Settings resolve in one order: command-line flag, then environment variable, then
``corpus.toml``, then the default. Unknown keys and bad values are ``ConfigError``s that
name the file and line of the offending key.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from builder.errors import ConfigError, Problem
from builder.errors import ValidationError as BuilderValidationError
from builder.records import sha256_hex
from builder.settings.base import Section
from builder.settings.dedup import DecontamSettings, DedupSettings
from builder.settings.filters import FilterSettings, VerifySettings
from builder.settings.generate import GenerateSettings
from builder.settings.llm import LLMSettings
from builder.settings.output import OutputSettings
from builder.settings.quality import EmbeddingSettings, JudgeSettings
from builder.settings.run import RunSettings
from builder.settings.syllabus import SyllabusSettings
from builder.settings.taxonomy import TaxonomySettings
from builder.settings.walk import WalkSettings

DEFAULT_CONFIG = "corpus.toml"

# Environment variables that override a config key (after flags, before the file).
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "CORPUS_CACHE_DIR": ("llm", "cache_dir"),
    "CORPUS_BASE_URL": ("llm", "base_url"),
    "CORPUS_MODEL": ("llm", "model"),
    "CORPUS_TAXONOMY_DIR": ("taxonomy", "dir"),
    "CORPUS_OUTPUT_DIR": ("output", "dir"),
    "CORPUS_EXECUTOR": ("run", "executor"),
    "CORPUS_WORKERS": ("run", "workers"),
    "CORPUS_RAY_ADDRESS": ("run", "ray_address"),
}


class CorpusConfig(Section):
    """The whole ``corpus.toml``. Relative paths are resolved against ``root``."""

    llm: LLMSettings = Field(default_factory=LLMSettings)
    taxonomy: TaxonomySettings = Field(default_factory=TaxonomySettings)
    syllabus: SyllabusSettings = Field(default_factory=SyllabusSettings)
    walk: WalkSettings = Field(default_factory=WalkSettings)
    generate: GenerateSettings = Field(default_factory=GenerateSettings)
    filters: FilterSettings = Field(default_factory=FilterSettings)
    verify: VerifySettings = Field(default_factory=VerifySettings)
    dedup: DedupSettings = Field(default_factory=DedupSettings)
    decontam: DecontamSettings = Field(default_factory=DecontamSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    run: RunSettings = Field(default_factory=RunSettings)

    embeddings: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    judge: JudgeSettings = Field(default_factory=JudgeSettings)

    # Not keys of the file: where it was read from, and the directory paths are relative to.
    source: str | None = Field(None, exclude=True)
    root: str = Field(".", exclude=True)

    def path(self, value: str | os.PathLike[str]) -> Path:
        """Resolve a path from the config against the config file's directory."""
        p = Path(value)
        return p if p.is_absolute() else Path(self.root) / p

    def config_hash(self) -> str:
        """sha256 of the effective settings (what a manifest records)."""
        return sha256_hex(self.model_dump(mode="json"))


def _key_line(text: str, loc: tuple[Any, ...]) -> int | None:
    """Best-effort line number of a dotted key in TOML text (tomllib keeps no positions)."""
    if not loc:
        return None
    lines = text.splitlines()
    section = [str(p) for p in loc[:-1] if not isinstance(p, int)]
    key = str(loc[-1])
    current: list[str] = []
    header = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    keyre = re.compile(r"^\s*\"?" + re.escape(key) + r"\"?\s*=")
    section_line = None
    for i, line in enumerate(lines, 1):
        m = header.match(line)
        if m:
            current = [s.strip().strip('"') for s in m.group(1).split(".")]
            if current == section:
                section_line = i
            continue
        if current == section and keyre.match(line):
            return i
    if not section:  # an unknown section: the line of its [header]
        for i, line in enumerate(lines, 1):
            m = header.match(line)
            if m and m.group(1).split(".")[0].strip().strip('"') == key:
                return i
    return section_line


def _key_hint(loc: tuple[Any, ...]) -> str:
    """A did-you-mean and the valid keys of the section that holds an unknown key."""
    import difflib

    model: Any = CorpusConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, Section)):
            model = None
            break
        model = annotation
    if model is None:
        return "check the spelling; the settings modules (builder/settings/*.py) list the keys"
    valid = [k for k, f in model.model_fields.items() if not f.exclude]
    where = f"[{'.'.join(str(p) for p in loc[:-1])}]" if len(loc) > 1 else "sections"
    close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
    listed = (
        f"valid {where}: {', '.join(valid)}"
        if len(loc) == 1
        else f"valid keys of {where}: {', '.join(valid)}"
    )
    return f"did you mean '{close[0]}'? {listed}" if close else listed


_MOVED = {("taxonomy", "include_proposed"): "[walk] include_proposed"}


def _apply(data: dict[str, Any], section: str, key: str, value: Any) -> None:
    data.setdefault(section, {})
    if not isinstance(data[section], dict):
        return
    data[section][key] = value


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    env: dict[str, str] | None = None,
    required: bool = False,
) -> CorpusConfig:
    """Read ``corpus.toml`` (if present), apply env vars then ``overrides`` ("section.key").

    A missing file is fine unless ``required`` (then it is a ``ConfigError``); defaults apply.
    ``overrides`` values of ``None`` are ignored, so CLI options can be passed straight in.
    """
    env = os.environ if env is None else env
    cfg_path = Path(path) if path is not None else Path(DEFAULT_CONFIG)
    text = ""
    data: dict[str, Any] = {}
    if cfg_path.exists():
        try:
            text = cfg_path.read_text(encoding="utf-8")
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            m = re.search(r"line (\d+)", str(exc))
            raise ConfigError(
                f"invalid TOML: {exc}",
                file=cfg_path,
                line=int(m.group(1)) if m else None,
                hint="fix the syntax; see examples/ for working configs",
            ) from None
        except UnicodeDecodeError:
            raise ConfigError("config is not UTF-8 text", file=cfg_path) from None
    elif required or path is not None:
        raise ConfigError(
            "config file not found",
            file=cfg_path,
            hint="pass --config PATH, or copy corpus.toml from the project root",
        )

    for var, (section, key) in ENV_OVERRIDES.items():
        if env.get(var):
            _apply(data, section, key, env[var])
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        _apply(data, section, key, value)

    for (section, key), new in _MOVED.items():
        if isinstance(data.get(section), dict) and key in data[section]:
            raise ConfigError(
                f"'{section}.{key}' moved: it is {new} now (one place for it)",
                file=cfg_path,
                line=_key_line(text, (section, key)) if text else None,
                hint=f"write `{new.split()[1]} = ...` under {new.split()[0]} instead",
            )
    root = str(cfg_path.parent.resolve()) if cfg_path.exists() else str(Path.cwd())
    try:
        cfg = CorpusConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            dotted = ".".join(str(p) for p in loc)
            if err["type"] == "extra_forbidden":
                msg = f"unknown key '{dotted}'"
                hint = _key_hint(loc)
            else:
                msg = f"bad value for '{dotted}': {err['msg']}"
                hint = None
            problems.append(
                Problem(msg, file=cfg_path, line=_key_line(text, loc) if text else None, hint=hint)
            )
        if len(problems) == 1:
            p = problems[0]
            raise ConfigError(p.message, file=p.file, line=p.line, hint=p.hint) from None
        raise BuilderValidationError(problems) from None
    cfg.source = str(cfg_path) if cfg_path.exists() else None
    cfg.root = root
    return cfg
