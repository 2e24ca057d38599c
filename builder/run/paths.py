"""Where a run keeps its files: one ``RunDir`` names every path a stage reads or writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from builder.config import CorpusConfig
from builder.errors import ConfigError

WORK_DIR = "work"
LEDGER_NAME = "ledger.json"


@dataclass(frozen=True)
class RunDir:
    """The files of one run directory.

    ``root`` holds the published corpus (``documents/``, ``rejected.parquet``,
    ``manifest.json``, ``README.md``, ``report.html``); ``work`` holds every stage's
    intermediate partitions and ``work/_done/`` the completion markers.
    """

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def work(self) -> Path:
        return self.root / WORK_DIR

    @property
    def markers(self) -> Path:
        return self.work / "_done"

    @property
    def ledger(self) -> Path:
        return self.work / LEDGER_NAME

    def stage_dir(self, stage: str) -> Path:
        """``work/<stage>/``: the partitions a stage writes."""
        return self.work / stage

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def card(self) -> Path:
        return self.root / "README.md"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def shards(self) -> Path:
        return self.root / "documents"


def with_run(config: CorpusConfig, run: str | None) -> CorpusConfig:
    """``config`` with ``[output] run`` replaced by ``run`` (checked to be a plain name)."""
    name = run if run is not None else config.output.run
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise ConfigError(
            f"bad run name {name!r}",
            file=config.source if run is None else None,
            hint="use a plain folder name such as demo or v1",
        )
    if name == config.output.run:
        return config
    copy = config.model_copy(deep=True)
    copy.output = copy.output.model_copy(update={"run": name})
    return copy


def run_dir(config: CorpusConfig, run: str | None = None) -> Path:
    """The run directory ``<output.dir>/<run>`` of a config (``run`` defaults to [output] run)."""
    cfg = with_run(config, run)
    return cfg.path(cfg.output.dir) / cfg.output.run


def config_for_run(config: CorpusConfig, run: str | None) -> tuple[CorpusConfig, str | None]:
    """``(config, run name)`` for a ``--run`` value that is a run name or a run directory.

    A value with a path separator (``outputs/v1``) names the directory itself: ``[output]
    dir`` becomes its parent and the run its name.
    """
    if run is None or ("/" not in run and "\\" not in run):
        return config, run
    path = Path(run).resolve()
    copy = config.model_copy(deep=True)
    copy.output = copy.output.model_copy(update={"dir": str(path.parent), "run": path.name})
    return copy, path.name
