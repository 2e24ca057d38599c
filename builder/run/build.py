"""``corpus build``: run the build's stages over a run directory, resumable and incremental.

The build is ``builder.stages.build_stages()`` run by an executor over
``<output.dir>/<run>/``; this module adds what surrounds the stages: checking the inputs
before anything is written, the run lock, the engine (opened on first use, closed after the
last stage that talks to the model), the budget cap over every stage, and the ledger.

A stage whose marker matches its fingerprint is skipped, so rerunning a finished build
sends nothing, recomputes nothing, starts no model server and says so. A build killed at
any point (Ctrl-C, ``kill -9``) resumes where it stopped, and the final corpus is the same
as an uninterrupted run's. After a curator edits a subject or a template, only the requests
whose rendered prompts changed are sent; the rest come from the run's partitions or the LLM
cache (``.corpus-cache/``, shared by all runs).

**Which syllabi a build uses.** When ``[syllabus] generate_missing`` is on (the default, as in
GLAN), missing syllabi of the selected subjects are generated as ``proposed`` files and the walk
uses approved *and* proposed syllabi. With ``generate_missing = false`` the build is
approved-only: nothing is generated and only approved syllabi are walked (unless
``[walk] include_proposed``). Subjects whose syllabus could not be generated are walked by
their topic leaves.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.config import CorpusConfig
from builder.run.executor import make_executor
from builder.run.follow import early_workers, followers, following
from builder.run.inputs import check_inputs
from builder.run.ledger import Ledger, MeteredLLM, budget_message
from builder.run.lock import run_lock
from builder.run.paths import RunDir, with_run
from builder.util.files import atomic_write_text
from builder.util.memory import long_lived_frozen

if TYPE_CHECKING:  # pragma: no cover
    from builder.llm.base import LLM
    from builder.stages.base import RunContext, Stage

Log = Callable[[str], None]


def _noop(_: str) -> None:
    pass


@dataclass
class BuildSummary:
    """What one ``build`` call did: counts, tokens, rejections, cost and time per stage.

    ``cost``, ``requests_sent``, ``requests_cached`` and ``stage_seconds`` are this call's;
    the corpus counts (``documents``, ``tokens``, ``rejected``) describe the finished run.
    """

    run: str
    run_dir: Path
    up_to_date: bool = False
    documents: int = 0
    tokens: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    cost: float = 0.0
    requests_sent: int = 0
    requests_cached: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    syllabi_written: int = 0
    syllabi_failed: list[str] = field(default_factory=list)
    units: int = 0
    total_cost: float = 0.0  # this run directory over all its builds
    counters: dict[str, dict[str, Any]] = field(default_factory=dict)  # per stage, this call

    @property
    def card(self) -> Path:
        return self.run_dir / "README.md"

    @property
    def report(self) -> Path:
        return self.run_dir / "report.html"

    @property
    def shards(self) -> Path:
        return self.run_dir / "documents"

    @property
    def manifest(self) -> Path:
        return self.run_dir / "manifest.json"

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "run_dir": str(self.run_dir),
            "up_to_date": self.up_to_date,
            "documents": self.documents,
            "tokens": self.tokens,
            "rejected": dict(self.rejected),
            "cost_usd": round(self.cost, 6),
            "total_cost_usd": round(self.total_cost, 6),
            "requests_sent": self.requests_sent,
            "requests_cached": self.requests_cached,
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "syllabi_written": self.syllabi_written,
            "syllabi_failed": list(self.syllabi_failed),
            "units": self.units,
            "card": str(self.card),
            "report": str(self.report),
            "shards": str(self.shards),
            "manifest": str(self.manifest),
        }


@contextlib.contextmanager
def _engine(
    config: CorpusConfig,
    llm: LLM | None,
    cache_dir: str | None,
    progress: Any,
    settings: Any = None,
) -> Iterator[Any]:
    """``llm`` if given, else an engine for ``settings`` (default ``[llm]``), with the
    build's cache directory."""
    if llm is not None:
        yield llm
        return
    from builder.llm import open_engine, resolve_cache_dir

    directory = resolve_cache_dir(cache_dir, config.llm, root=config.root)
    with open_engine(settings or config.llm, cache_dir=directory, progress=progress) as engine:
        yield engine


def open_context(
    config: CorpusConfig,
    *,
    run: str | None = None,
    max_cost: float | None = None,
    cache_dir: str | None = None,
    llm: LLM | None = None,
    progress: Any = None,
    log: Log = _noop,
    stack: contextlib.ExitStack,
) -> RunContext:
    """A ``RunContext`` for ``config``'s run directory whose engine opens on first use and
    is closed with ``stack`` (``llm`` replaces the configured engine)."""
    from builder.stages.base import RunContext

    config = with_run(config, run)
    paths = RunDir(config.path(config.output.dir) / config.output.run)
    ctx = RunContext(config=config, paths=paths, log=log, ledger=Ledger.load(paths.ledger))

    def open_llm() -> MeteredLLM:
        engine = stack.enter_context(_engine(config, llm, cache_dir, progress))
        return MeteredLLM(engine, max_cost, on_progress=lambda: flush_ledger(ctx))

    ctx.open_llm = open_llm
    from builder.quality.hooks import judge_llm_settings

    judge_settings = judge_llm_settings(config)
    if judge_settings is not None:

        def open_judge() -> MeteredLLM:
            judge = _engine(config, None, cache_dir, False, judge_settings)
            return ctx.llm().share(stack.enter_context(judge))

        ctx.open_judge = open_judge
    return ctx


def flush_ledger(ctx: RunContext) -> None:
    """Write the run's ledger: what earlier builds spent plus this call so far."""
    prior = ctx.ledger or Ledger()
    meter = ctx.llm_opened
    seconds = dict(prior.stage_seconds)
    for stage, s in ctx.seconds.items():
        seconds[stage] = seconds.get(stage, 0.0) + s
    data = Ledger(
        cost_usd=prior.cost_usd + (meter.cost if meter else 0.0),
        requests_sent=prior.requests_sent + (meter.sent if meter else 0),
        requests_cached=prior.requests_cached + (meter.cached if meter else 0),
        stage_seconds=seconds,
        builds=prior.builds + 1,
    )
    atomic_write_text(ctx.paths.ledger, json.dumps(data.to_dict(), indent=2) + "\n")


def run_stages(
    config: CorpusConfig,
    stages: Sequence[Stage],
    *,
    run: str | None = None,
    max_cost: float | None = None,
    cache_dir: str | None = None,
    llm: LLM | None = None,
    progress: Any = None,
    log: Log = _noop,
    executor: str | None = None,
) -> BuildSummary:
    """Run ``stages`` over the run directory of ``config`` (the build, or one stage).

    ``run`` overrides ``[output] run``. ``llm`` replaces the configured engine. ``max_cost``
    caps what this call may spend in USD over every stage: when reached, finished work is
    saved and ``BudgetExceeded`` is raised; rerunning resumes. ``progress`` is passed to the
    engine (None: bar on a TTY, False: silent). ``log`` gets one line per stage event.
    A stage whose inputs are missing (``corpus filter`` before ``corpus generate``) is an
    ``InputError`` saying to run the stages before it first. ``executor`` overrides
    ``[run] executor`` (``local`` or ``ray``: partitioned stages as Ray tasks on
    ``[run] ray_address``); the corpus is the same whichever runs it.
    """
    config = with_run(config, run)
    # Everything that can be wrong with the inputs is checked before anything is written.
    check_inputs(config)
    runner = make_executor(executor or config.run.executor, config)
    with contextlib.ExitStack() as outer:
        outer.enter_context(long_lived_frozen())
        outer.callback(runner.close)
        engine_stack = outer.enter_context(contextlib.ExitStack())
        ctx = open_context(
            config,
            max_cost=max_cost,
            cache_dir=cache_dir,
            llm=llm,
            progress=progress,
            log=log,
            stack=engine_stack,
        )
        ctx.executor = runner
        summary = BuildSummary(run=config.output.run, run_dir=ctx.paths.root)
        summary.counters = ctx.counters
        ctx.paths.work.mkdir(parents=True, exist_ok=True)
        last_llm = max((i for i, s in enumerate(stages) if s.uses_llm), default=-1)
        with run_lock(ctx.paths.work):
            # A new run's follower workers load their stages while syllabi and walk run.
            early = early_workers(stages, ctx)
            if early is not None:  # (shut down by its follower, or here on the way out)
                outer.callback(early[1].shutdown, wait=True, cancel_futures=True)
            try:
                with budget_message(lambda: ctx.llm_opened, max_cost):
                    for i, stage in enumerate(stages):
                        # filter and quality start on generate's partitions as they come
                        pool = early[1] if early is not None and early[0] == i else None
                        with following(ctx, followers(stages, i, ctx), drain=True, pool=pool):
                            runner.run_stage(stage, ctx)
                        # After each stage, not only on progress ticks (which a stage that
                        # sends little may never reach): a build killed later keeps in the
                        # ledger what it spent and that it ran.
                        flush_ledger(ctx)
                        if i == last_llm:
                            engine_stack.close()  # no model server outlives its stages
            finally:
                _sync(summary, ctx)
                if ctx.llm_opened is not None or ctx.seconds:
                    flush_ledger(ctx)
    summary.total_cost = Ledger.load(ctx.paths.ledger).cost_usd
    _fill_counts(summary)
    summary.up_to_date = not ctx.did_work and summary.requests_sent == 0
    return summary


def build(
    config: CorpusConfig,
    *,
    run: str | None = None,
    max_cost: float | None = None,
    cache_dir: str | None = None,
    llm: LLM | None = None,
    progress: Any = None,
    log: Log = _noop,
) -> BuildSummary:
    """Run the whole pipeline into ``<output.dir>/<run>/``; resumable and incremental.

    See ``run_stages``. Returns a ``BuildSummary``; ``up_to_date`` is true when nothing
    needed doing (no request sent, no stage recomputed).
    """
    from builder.stages import build_stages

    return run_stages(
        config,
        build_stages(),
        run=run,
        max_cost=max_cost,
        cache_dir=cache_dir,
        llm=llm,
        progress=progress,
        log=log,
    )


def run_named(
    config: CorpusConfig, names: Sequence[str], run: str | None = None, **kwargs: Any
) -> BuildSummary:
    """Run the build's stages called ``names`` (``corpus filter`` ...) over a run directory.

    ``run`` is a run name or a run directory path; other keywords as ``run_stages``.
    """
    from builder.run.paths import config_for_run
    from builder.stages import stage_named

    config, run = config_for_run(config, run)
    return run_stages(config, [stage_named(n) for n in names], run=run, **kwargs)


def _sync(summary: BuildSummary, ctx: RunContext) -> None:
    meter = ctx.llm_opened
    if meter is not None:
        summary.cost = meter.cost
        summary.requests_sent = meter.sent
        summary.requests_cached = meter.cached
    summary.stage_seconds = dict(ctx.seconds)
    walk = ctx.counters.get("walk") or {}
    summary.units = int(walk.get("units") or 0)
    syl = ctx.counters.get("syllabi") or {}
    summary.syllabi_written = int(syl.get("written") or 0)
    summary.syllabi_failed = list(syl.get("failed") or [])


def _fill_counts(summary: BuildSummary) -> None:
    try:
        manifest = json.loads(summary.manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    counts = manifest.get("counts") or {}
    summary.documents = int(counts.get("documents") or 0)
    summary.tokens = int(counts.get("tokens") or 0)
    by_stage = (counts.get("rejected") or {}).get("by_stage_reason") or {}
    summary.rejected = {
        f"{stage}/{reason}": int(n)
        for stage, reasons in sorted(by_stage.items())
        for reason, n in sorted(reasons.items())
    }
