"""The stage contract: what every step of a build is, and the context it runs in.

A **stage** is a small class with

- ``name``: its marker (``work/_done/<name>.json``) and output folder (``work/<name>/``);
- ``inputs(ctx)`` / ``outputs(ctx)``: the run-directory paths it reads and writes;
- ``fingerprint(ctx)``: a hash of everything that determines its outputs (its settings and
  its inputs' fingerprints, read from the upstream markers), or ``None`` for a stage that
  always runs because it resumes itself at a finer grain (walk, generate);
- ``run(ctx)``: do the work, return its counters (a JSON-able dict, saved in the marker);
- ``plan(ctx)``: what it would do, sending and writing nothing (for ``corpus plan``).

A stage holds no global state and never the whole corpus: partitioned stages
(``PartitionStage``) implement ``run_partition`` over one bounded table and the base class
streams the input partitions through it. The executor (``builder.run.executor``) runs a list
of stages over a run directory and skips a stage whose marker holds the same fingerprint
and whose outputs exist. Stages talk only through files of the run directory, so
``corpus <stage> --run DIR`` runs one of them with the same code as ``corpus build``.

To add a stage: subclass ``Stage`` (or ``PartitionStage``) in ``builder/stages/<name>.py``,
and put an instance in the list in ``builder.stages.build_stages``.
"""

from __future__ import annotations

import contextlib
import functools
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from builder.config import CorpusConfig
from builder.run.executor import LocalExecutor
from builder.run.markers import Markers
from builder.run.partitioned import run_partitioned
from builder.run.paths import RunDir

if TYPE_CHECKING:  # pragma: no cover
    from builder.run.ledger import Ledger, MeteredLLM
    from builder.taxonomy import Taxonomy

Log = Callable[[str], None]


def _noop(_: str) -> None:
    pass


@dataclass
class RunContext:
    """What a stage gets: the config, the run directory, its markers, a log, the model.

    ``llm()`` opens the configured engine on first use (wrapped in the build's metered,
    budget-capped ``MeteredLLM``; ``judge_llm()`` likewise for the judge's own endpoint);
    stages that never call them never start a model server.
    ``taxonomy()`` loads the taxonomy once per build; a stage that writes taxonomy files
    (syllabi) calls ``reload_taxonomy()``. ``did_work`` turns true when a stage recomputed
    something; ``seconds`` and ``counters`` collect this call's figures per stage.
    """

    config: CorpusConfig
    paths: RunDir
    log: Log = _noop
    open_llm: Callable[[], MeteredLLM] | None = None
    #: The judge's own endpoint (``[judge] base_url``); None: the judge uses ``llm()``.
    open_judge: Callable[[], MeteredLLM] | None = None
    ledger: Ledger | None = None
    #: Maps partitioned stages (``LocalExecutor`` or ``RayExecutor``; None: local).
    executor: Any = None
    did_work: bool = False
    #: Told each partition a stage finished writing, when something follows that stage
    #: (``builder.run.follow``); stages call ``partition_written``.
    on_partition: Callable[[Path], None] | None = None
    #: Told when such a stage is about to write a partition that did not exist
    #: (``work_ahead``).
    on_work_ahead: Callable[[], None] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    counters: dict[str, dict[str, Any]] = field(default_factory=dict)
    _llm: MeteredLLM | None = None
    _judge: MeteredLLM | None = None
    _taxonomy: Taxonomy | None = None

    def work_ahead(self) -> None:
        """A stage that emits partitions is about to write one that did not exist: the
        stages that follow it will have work (a follower's worker loads them meanwhile)."""
        if self.on_work_ahead is not None:
            self.on_work_ahead()

    def partition_written(self, path: Path) -> None:
        """A stage has written output partition ``path`` for good (in input order): stages
        that follow it may start on it now."""
        if self.on_partition is not None and path.exists():
            self.on_partition(path)

    def runner(self) -> Any:
        """The executor that maps this run's partitions and tasks: ``executor``, or a
        ``LocalExecutor`` when none was set (a stage run on its own, from Python)."""
        return self.executor if self.executor is not None else LocalExecutor()

    @property
    def markers(self) -> Markers:
        return Markers(self.paths.markers)

    def llm(self) -> MeteredLLM:
        if self._llm is None:
            if self.open_llm is None:
                raise RuntimeError("this run context has no model (open_llm not given)")
            self._llm = self.open_llm()
        return self._llm

    def judge_llm(self) -> MeteredLLM:
        """The educational-value judge's model: its own endpoint when ``[judge]`` names one
        (opened on first use, metered and capped with the build's ``llm()``), else ``llm()``."""
        if self.open_judge is None:
            return self.llm()
        if self._judge is None:
            self._judge = self.open_judge()
        return self._judge

    @property
    def llm_opened(self) -> MeteredLLM | None:
        return self._llm

    def endpoint_llm(self, endpoint: str) -> MeteredLLM:
        """``judge_llm()`` for ``"judge"``, else ``llm()`` (how an executor answers a
        worker's model call that names its endpoint)."""
        return self.judge_llm() if endpoint == "judge" else self.llm()

    def for_worker(self, client: Callable[..., Any] | None) -> RunContext:
        """What a task in another process gets: the config and the run directory (no
        ledger, no log, no engine of its own). With ``client`` (called as
        ``client(model_name, endpoint)``), its ``llm()`` and ``judge_llm()`` reach this
        context's engines through it (a Ray broker, the local pool's queues)."""
        remote = RunContext(config=self.config, paths=self.paths)
        if client is not None:
            meter = self.llm_opened
            name = meter.model_name if meter is not None else self.config.llm.model
            remote.open_llm = functools.partial(client, name, "llm")
            if self.open_judge is not None:
                remote.open_judge = functools.partial(client, self.config.judge.model, "judge")
        return remote

    def taxonomy(self) -> Taxonomy:
        if self._taxonomy is None:
            from builder.taxonomy import load_taxonomy

            taxonomy = self.config.taxonomy
            self._taxonomy = load_taxonomy(self.config.path(taxonomy.dir), levels=taxonomy.levels)
        return self._taxonomy

    def reload_taxonomy(self) -> None:
        self._taxonomy = None

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


class Stage(ABC):
    """One step of a build over a run directory (see the module docstring)."""

    name: ClassVar[str]
    #: True when ``run`` may call ``ctx.llm()`` (the executor closes the engine after the
    #: last such stage, so a model server never outlives the stages that need it).
    uses_llm: ClassVar[bool] = False
    #: True when ``run`` calls ``ctx.partition_written`` for each output partition as soon
    #: as it is final, so the stages after it can follow it (``builder.run.follow``).
    emits_partitions: ClassVar[bool] = False

    def inputs(self, ctx: RunContext) -> list[Path]:
        """Run-directory paths this stage reads (checked to exist before it runs)."""
        return []

    @abstractmethod
    def outputs(self, ctx: RunContext) -> list[Path]:
        """Run-directory paths this stage writes (all must exist after it ran)."""

    @abstractmethod
    def fingerprint(self, ctx: RunContext) -> str | None:
        """Hash of everything its outputs depend on; None: run every time."""

    @abstractmethod
    def run(self, ctx: RunContext) -> dict[str, Any]:
        """Do the work; return counters (JSON-able), saved in the stage's marker."""

    def plan(self, ctx: RunContext) -> dict[str, Any]:
        """What ``run`` would do, without doing it (default: whether it is up to date)."""
        fp = self.fingerprint(ctx)
        up_to_date = fp is not None and ctx.markers.done(self.name, fp, self.outputs(ctx))
        return {"stage": self.name, "up_to_date": up_to_date}

    def out_dir(self, ctx: RunContext) -> Path:
        """``work/<name>/``."""
        return ctx.paths.stage_dir(self.name)


def upstream(ctx: RunContext, *stages: str) -> list[str | None]:
    """The fingerprints the named stages finished with (part of a downstream fingerprint)."""
    return [ctx.markers.fingerprint(s) for s in stages]


class PartitionStage(Stage):
    """A stage that maps ``run_partition`` over bounded input partitions.

    Subclasses give ``input_parts`` (the Parquet files to read), ``sinks`` (output name ->
    Arrow schema; each becomes ``work/<name>/<sink>/part-*.parquet``) and
    ``run_partition(ctx, table) -> {sink: rows}``. ``run`` hands it batches of exactly
    ``[run] partition_rows`` rows and writes one output partition per batch and sink, named
    after the input partition it came from, so memory is bounded by one partition whatever
    the corpus size and the output is the same whichever executor maps the partitions
    (``builder.run.partitioned``). ``run_partition`` must depend only on its batch and the
    settings: on Ray it runs in another process, with a context holding the config and the
    run directory (``ctx.llm()`` reaches the driver's engine). ``max_rows_seen`` records the
    largest batch handed to ``run_partition`` (tests assert it).
    """

    max_rows_seen: int = 0
    #: The stage whose partitions this one reads, and the sink of it ("" for that stage's
    #: own folder): a ``builder.run.follow.Follower`` can then run this stage's tasks as
    #: that stage writes them. None: it reads something else.
    follows: ClassVar[tuple[str, str] | None] = None

    @abstractmethod
    def input_parts(self, ctx: RunContext) -> list[Path]: ...

    def task_fingerprint(self, ctx: RunContext) -> str | None:
        """Hash of everything one task's outputs depend on besides the bytes of its input
        file (which its identity hashes): the stage's settings and the fingerprints of any
        other stage it reads, but not of the stage whose partitions it maps. Known before
        that stage has finished, so a task can run as soon as its input is written.
        Default: ``fingerprint`` (tasks then run only after the stage before finished)."""
        return self.fingerprint(ctx)

    @abstractmethod
    def sinks(self) -> dict[str, pa.Schema]: ...

    @abstractmethod
    def run_partition(self, ctx: RunContext, table: pa.Table) -> dict[str, list[dict[str, Any]]]:
        """Process one bounded batch of input rows; return the rows for each sink."""

    def needs_llm(self, ctx: RunContext) -> bool:
        """Whether ``run_partition`` may call the model with this config (default:
        ``uses_llm``); on worker processes it then reaches the driver's engine."""
        return self.uses_llm

    def local_only(self, ctx: RunContext) -> bool:
        """Whether its partitions must run in the build's own process with this config
        (default: no; the local executor may map them on worker processes)."""
        return False

    def warm(self, ctx: RunContext) -> str | None:
        """Load what its tasks load once per copy of the stage (a model, the units), before
        the first: a follower's worker does it while the stage it follows has not written
        a partition yet, on a core that would idle. Returns what it loaded, for the log.
        Default: nothing."""
        return None

    def preload(self, config: CorpusConfig) -> None:
        """Load what its tasks load once per process and that depends on ``config`` only,
        never on the run's files: a follower's worker does it as it starts when the build
        starts it before its first stages (``builder.run.follow.start_workers``).
        Default: nothing."""

    def finish(self, ctx: RunContext, counters: dict[str, Any]) -> None:
        """Called after the last partition (e.g. to log a summary); default: nothing."""

    def sink_dir(self, ctx: RunContext, sink: str) -> Path:
        return self.out_dir(ctx) / sink

    def outputs(self, ctx: RunContext) -> list[Path]:
        return [self.sink_dir(ctx, s) for s in self.sinks()]

    def task_counters(self) -> dict[str, Any]:
        """Counters this instance gathered since the last call, then reset (default: none).

        Called after each task (one input partition), wherever it ran: on a Ray worker the
        instance is a copy, so what ``run_partition`` tallies must travel back this way.
        Numbers are summed over tasks and dicts merged (``builder.run.partitioned``).
        """
        return {}

    def run(self, ctx: RunContext) -> dict[str, Any]:
        """Map ``run_partition`` over the input partitions with ``ctx.executor``; finished
        partitions of an interrupted run are skipped (``builder.run.partitioned``)."""
        return run_partitioned(self, ctx)
