"""The end-to-end build (``corpus build``) and its dry run (``corpus plan``).

``build`` runs taxonomy -> syllabi -> walk -> generate -> filter/verify -> dedup ->
decontaminate -> assemble (corpus, card, report) into ``<output.dir>/<run>/``. Every stage
reads and writes files under ``<run>/work/`` so it can be inspected, resumed or rerun alone:

- ``units.jsonl``            the walk (deterministic; rewritten only when it changes)
- ``generated.jsonl``        every LLM result, appended as it completes (resume key: request
                             id + prompt hash, see ``builder.generate``)
- ``filtered/``              kept and rejected rows after filters + verification
- ``dedup/``                 kept rows, duplicate clusters, removed rows
- ``decontam/``              clean rows, benchmark hits, contaminated rows
- ``diversity/``             the diversity tables shown in the report
- ``_done/<stage>.json``     completion markers holding a fingerprint of the stage's inputs
                             and settings; a stage clears its marker before it starts
- ``ledger.json``            spend, requests and seconds of this run summed over every build

A stage whose marker matches the fingerprint of its inputs is skipped, so rerunning a
finished build sends nothing, recomputes nothing, starts no model server and says so. A build
killed at any point (Ctrl-C, ``kill -9``) resumes where it stopped: generation rows are
appended as results arrive, every other file is written atomically (temp file + rename) before
its marker, and the final corpus is the same as an uninterrupted run's. After a curator edits
a subject or a template, only the requests whose rendered prompts changed are sent; the rest
are answered by the LLM cache (``.corpus-cache/``, shared by all runs).

**Which syllabi a build uses.** When ``[syllabus] generate_missing`` is on (the default, as in
GLAN), missing syllabi of the selected subjects are generated as ``proposed`` files and the walk
uses approved *and* proposed syllabi. With ``generate_missing = false`` the build is
approved-only: nothing is generated and only approved syllabi are walked (unless
``[walk] include_proposed``). Subjects whose syllabus could not be generated are walked by
their topic leaves.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from builder.config import CorpusConfig
from builder.errors import BudgetExceeded, BuilderError, ConfigError, InputError, LLMError
from builder.records import ChatRequest, ChatResult, Unit, canonical_json, sha256_hex
from builder.taxonomy.files import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from builder.generate import GenerateStats
    from builder.llm.base import LLM
    from builder.taxonomy import Taxonomy
    from builder.templates import TemplateSet
    from builder.walk import Walk

Log = Callable[[str], None]

#: The stages of a build, in order (keys of ``BuildSummary.stage_seconds``).
STAGES = (
    "syllabi",
    "walk",
    "generate",
    "filter",
    "quality",  # quality gates (builder.quality.hooks)
    "dedup",
    "semdedup",  # quality gates (builder.quality.hooks)
    "decontam",
    "assemble",
)
WORK_DIR = "work"
LEDGER_NAME = "ledger.json"
#: Seconds between ledger writes while requests complete (bounds what kill -9 forgets).
LEDGER_FLUSH_S = 2.0


def _noop(_: str) -> None:
    pass


# --------------------------------------------------------------------------- files


def _write_parquet(df: pl.DataFrame, path: Path) -> None:
    # io_tables pulls in pyarrow: import it when a stage writes, not when the CLI starts.
    from builder.io_tables import write_parquet_atomic

    write_parquet_atomic(df, path)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Markers:
    """Completion markers ``work/_done/<stage>.json``: the fingerprint a stage finished with.

    A stage calls ``clear`` before it writes anything and ``mark`` after its last output is
    in place, so a marker never vouches for outputs of an unfinished run.
    """

    directory: Path

    def _path(self, stage: str) -> Path:
        return self.directory / f"{stage}.json"

    def read(self, stage: str) -> dict[str, Any]:
        try:
            data = json.loads(self._path(stage).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def done(self, stage: str, fingerprint: str, outputs: Iterable[Path] = ()) -> bool:
        """True when ``stage`` finished with this fingerprint and its outputs still exist."""
        return self.read(stage).get("fingerprint") == fingerprint and all(
            p.exists() for p in outputs
        )

    def clear(self, stage: str) -> None:
        self._path(stage).unlink(missing_ok=True)

    def mark(self, stage: str, fingerprint: str, **info: Any) -> None:
        atomic_write_text(
            self._path(stage),
            json.dumps({"fingerprint": fingerprint, **info}, sort_keys=True, default=str),
        )


# --------------------------------------------------------------------------- metering


@dataclass
class Ledger:
    """What a run directory has cost over every build into it (``work/ledger.json``)."""

    cost_usd: float = 0.0
    requests_sent: int = 0
    requests_cached: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    builds: int = 0

    @classmethod
    def load(cls, path: Path) -> Ledger:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        if not isinstance(data, dict):
            return cls()
        return cls(
            cost_usd=float(data.get("cost_usd") or 0.0),
            requests_sent=int(data.get("requests_sent") or 0),
            requests_cached=int(data.get("requests_cached") or 0),
            stage_seconds={str(k): float(v) for k, v in (data.get("stage_seconds") or {}).items()},
            builds=int(data.get("builds") or 0),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "cost_usd": round(self.cost_usd, 6),
            "requests_sent": self.requests_sent,
            "requests_cached": self.requests_cached,
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "builds": self.builds,
        }


class MeteredLLM:
    """An ``LLM`` wrapper that counts what a build sends and caps its total spend.

    Every stage of one build (syllabi, generation, second samples) talks to the model through
    one ``MeteredLLM``, so ``sent`` (requests answered by the model now, not by the cache),
    ``cached`` and ``cost`` cover the whole build, and ``max_cost`` caps all of it together.
    """

    def __init__(
        self,
        inner: LLM,
        max_cost: float | None = None,
        on_progress: Callable[[], None] | None = None,
    ) -> None:
        self.inner = inner
        self.max_cost = max_cost
        self.sent = 0
        self.cached = 0
        self.cost = 0.0
        self._on_progress = on_progress
        self._last_flush = time.monotonic()

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    def request_sha256(self, request: ChatRequest) -> str:
        return self.inner.request_sha256(request)

    def remaining(self) -> float | None:
        """USD this build may still spend (None: no cap)."""
        if self.max_cost is None:
            return None
        return max(0.0, self.max_cost - self.cost)

    def _count(self, result: ChatResult) -> None:
        if result.status == "skipped":
            return
        if result.cached:
            self.cached += 1
        else:
            self.sent += 1
            self.cost += result.cost or 0.0
        now = time.monotonic()
        if self._on_progress is not None and now - self._last_flush >= LEDGER_FLUSH_S:
            self._last_flush = now
            self._on_progress()

    def run(
        self, requests: Iterable[ChatRequest], *, max_cost: float | None = None
    ) -> Iterator[ChatResult]:
        caps = [c for c in (max_cost, self.remaining()) if c is not None]
        for result in self.inner.run(requests, max_cost=min(caps) if caps else None):
            self._count(result)
            yield result

    def complete(self, request: ChatRequest) -> ChatResult:
        results = list(self.run([request]))
        return results[0]


# --------------------------------------------------------------------------- summaries


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


@dataclass
class PlanRow:
    """Requests, cache hits, tokens and cost of one discipline (or the total)."""

    discipline: str
    requests: int = 0
    cached: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    max_output_tokens: int = 0
    cost: float | None = 0.0
    max_cost: float | None = 0.0

    def add(self, other: PlanRow) -> None:
        self.requests += other.requests
        self.cached += other.cached
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.max_output_tokens += other.max_output_tokens
        self.cost = None if self.cost is None or other.cost is None else self.cost + other.cost
        self.max_cost = (
            None
            if self.max_cost is None or other.max_cost is None
            else self.max_cost + other.max_cost
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "discipline": self.discipline,
            "requests": self.requests,
            "cached": self.cached,
            "to_send": self.requests - self.cached,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "max_output_tokens": self.max_output_tokens,
            "cost_usd": None if self.cost is None else round(self.cost, 6),
            "max_cost_usd": None if self.max_cost is None else round(self.max_cost, 6),
        }


@dataclass
class PlanSummary:
    """``corpus plan``: requests, tokens and cost per discipline before anything is spent.

    ``rows`` has one entry per discipline (generation, evolution and second-sample requests
    of its documents) plus ``(syllabi)`` when syllabi are missing. ``estimated`` requests
    depend on outputs that do not exist yet (an exercise to evolve or to check): they are
    counted as an upper bound and can never be cache hits.
    """

    model: str
    units: int
    rows: list[PlanRow]
    syllabus_requests: int
    generation_requests: int
    transform_requests: int
    second_sample_requests: int
    estimated: int
    missing_syllabi: tuple[str, ...] = ()
    unpriced: tuple[str, ...] = ()

    @property
    def total(self) -> PlanRow:
        t = PlanRow("TOTAL")
        for r in self.rows:
            t.add(r)
        return t

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "units": self.units,
            "per_discipline": [r.to_dict() for r in self.rows],
            "total": self.total.to_dict(),
            "syllabus_requests": self.syllabus_requests,
            "generation_requests": self.generation_requests,
            "transform_requests": self.transform_requests,
            "second_sample_requests": self.second_sample_requests,
            "estimated_requests": self.estimated,
            "missing_syllabi": list(self.missing_syllabi),
            "unpriced_models": list(self.unpriced),
        }


# --------------------------------------------------------------------------- context


@dataclass
class _Context:
    config: CorpusConfig
    run: str
    run_dir: Path
    work: Path
    markers: Markers
    log: Log
    summary: BuildSummary
    ledger: Ledger
    did_work: bool = False

    def flush_ledger(self, meter: MeteredLLM | None = None) -> None:
        """Write this run's ledger: what earlier builds spent plus this build so far."""
        data = Ledger(
            cost_usd=self.ledger.cost_usd + (meter.cost if meter else self.summary.cost),
            requests_sent=self.ledger.requests_sent
            + (meter.sent if meter else self.summary.requests_sent),
            requests_cached=self.ledger.requests_cached
            + (meter.cached if meter else self.summary.requests_cached),
            stage_seconds={
                s: self.ledger.stage_seconds.get(s, 0.0) + self.summary.stage_seconds.get(s, 0.0)
                for s in STAGES
                if s in self.ledger.stage_seconds or s in self.summary.stage_seconds
            },
            builds=self.ledger.builds + 1,
        )
        atomic_write_text(self.work / LEDGER_NAME, json.dumps(data.to_dict(), indent=2) + "\n")

    def total_ledger(self) -> Ledger:
        return Ledger.load(self.work / LEDGER_NAME)


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


def _config_line(config: CorpusConfig, section: str, key: str) -> int | None:
    if not config.source:
        return None
    from builder.config import _key_line

    try:
        text = Path(config.source).read_text(encoding="utf-8")
    except OSError:
        return None
    return _key_line(text, (section, key))


def _load_taxonomy(config: CorpusConfig) -> Taxonomy:
    from builder.taxonomy import load_taxonomy

    return load_taxonomy(config.path(config.taxonomy.dir))


def _load_templates(config: CorpusConfig) -> TemplateSet:
    from builder.templates import load_templates

    return load_templates(config.path(config.generate.templates_dir))


def node_statuses(config: CorpusConfig) -> tuple[str, ...]:
    """Node statuses a build walks: approved, plus proposed when the config includes them."""
    if config.taxonomy.include_proposed or config.walk.include_proposed:
        return ("approved", "proposed")
    return ("approved",)


def syllabus_statuses(config: CorpusConfig) -> tuple[str, ...]:
    """Syllabus statuses a build walks (see the module docstring)."""
    if config.syllabus.generate_missing or config.walk.include_proposed:
        return ("approved", "proposed")
    return ("approved",)


def _check_subtree(tax: Taxonomy, config: CorpusConfig) -> None:
    import difflib

    for root in config.walk.subtree:
        if root not in tax:
            close = difflib.get_close_matches(root, tax.ids(), n=3, cutoff=0.6)
            raise ConfigError(
                f"[walk] subtree names unknown taxonomy id '{root}'",
                file=config.source,
                line=_config_line(config, "walk", "subtree"),
                hint=f"did you mean {', '.join(close)}?"
                if close
                else "use an id shown by `corpus taxonomy show`",
            )


def selected_subjects(tax: Taxonomy, config: CorpusConfig) -> list[str]:
    """Subjects whose syllabus the configured walk would use, in taxonomy order."""
    from builder.syllabus import subject_of, subjects

    _check_subtree(tax, config)
    statuses = set(node_statuses(config))

    def ok(node_id: str) -> bool:
        return all(n.status in statuses for n in tax.path(node_id))

    chosen: list[str] = []
    for root in config.walk.subtree or [None]:
        found: list[str] = []
        if root is not None:
            subject = subject_of(tax, root)
            if subject is not None:  # a subtree at or below a subject: that subject
                found = [subject.id]
        if not found:
            found = [n.id for n in subjects(tax, under=root)]
        chosen.extend(s for s in found if s not in chosen and ok(s))
    return chosen


def missing_syllabi(tax: Taxonomy, config: CorpusConfig) -> list[str]:
    """Selected subjects without a syllabus file, when the config lets the build make them."""
    from builder.syllabus import syllabus_path

    if not config.syllabus.generate_missing or not config.walk.use_syllabi:
        return []
    return [s for s in selected_subjects(tax, config) if not syllabus_path(tax, s).exists()]


def walk_units(tax: Taxonomy, config: CorpusConfig) -> tuple[Walk, list[Unit]]:
    """The build's walk and its units (one round when the config sets no bound)."""
    from builder.walk import walk_from_settings

    _check_subtree(tax, config)
    w = config.walk
    overrides: dict[str, Any] = {
        "statuses": node_statuses(config),
        "syllabus_statuses": syllabus_statuses(config),
    }
    if w.limit is None and w.token_budget is None and w.rounds is None:
        overrides["rounds"] = 1  # every selected slot once: a build must end
    walk = walk_from_settings(tax, w, config.syllabus, **overrides)
    return walk, list(walk)


def benchmark_files(config: CorpusConfig) -> list[Path]:
    """The [decontam] benchmark files, checked to exist (a ``ConfigError`` names the key)."""
    if not config.decontam.enabled:
        return []
    import glob

    files: list[Path] = []
    for name in config.decontam.benchmarks:
        p = config.path(name)
        if p.is_file():
            files.append(p)
            continue
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
            if found:
                files.extend(found)
                continue
        matches = sorted(Path(m) for m in glob.glob(str(p)) if Path(m).is_file())
        if not matches:
            raise ConfigError(
                f"[decontam] benchmark file not found: {name} (looked at {p})",
                file=config.source,
                line=_config_line(config, "decontam", "benchmarks"),
                hint="fix the path (relative to the config file) or remove it from benchmarks",
            )
        files.extend(matches)
    return files


def check_inputs(config: CorpusConfig) -> tuple[Taxonomy, TemplateSet, list[Path]]:
    """Load and check the taxonomy, templates, template selection and benchmark files.

    Raises the first user error (a ``BuilderError`` naming file and line) before anything
    is sent or written, so a typo in corpus.toml never costs a request.
    """
    from builder.generate import plan_requests

    tax = _load_taxonomy(config)
    _check_subtree(tax, config)
    templates = _load_templates(config)
    try:
        plan_requests([], templates, config.generate)  # checks templates/audiences/styles
    except ConfigError as exc:
        p = exc.problems[0]
        key = re.match(r"\[generate\] (\w+)", p.message)
        if p.file is not None or key is None or not config.source:
            raise
        line = _config_line(config, "generate", key.group(1))
        raise ConfigError(p.message, file=config.source, line=line, hint=p.hint) from None
    return tax, templates, benchmark_files(config)


def rows_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Row dicts as a DataFrame; nested objects (``structured``) become canonical JSON text."""
    if not rows:
        return pl.DataFrame(schema={"id": pl.String, "text": pl.String})
    cleaned = []
    for row in rows:
        r = {}
        for key, value in row.items():
            if isinstance(value, dict) or (
                isinstance(value, list) and any(isinstance(v, dict | list) for v in value)
            ):
                value = canonical_json(value)
            r[key] = value
        cleaned.append(r)
    try:
        return pl.DataFrame(cleaned, infer_schema_length=None)
    except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
        raise InputError(
            f"generated rows cannot be made into a table: {exc}",
            hint="delete the run's work/ directory and rebuild (the LLM cache is kept)",
        ) from None


def _rows_digest(rows: list[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(canonical_json(row).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


@contextlib.contextmanager
def _stage(ctx: _Context, name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        s = ctx.summary.stage_seconds
        s[name] = s.get(name, 0.0) + time.perf_counter() - start


# --------------------------------------------------------------------------- engine


@contextlib.contextmanager
def _engine(
    config: CorpusConfig, llm: LLM | None, cache_dir: str | None, progress: Any
) -> Iterator[Any]:
    if llm is not None:
        yield llm
        return
    from builder.llm import open_engine, resolve_cache_dir

    directory = resolve_cache_dir(cache_dir, config.llm, root=config.root)
    with open_engine(config.llm, cache_dir=directory, progress=progress) as engine:
        yield engine


# --------------------------------------------------------------------------- build


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

    ``run`` overrides ``[output] run``. ``llm`` replaces the configured engine (tests pass a
    fake). ``max_cost`` caps what this call may spend in USD over every stage: when reached,
    finished work is saved and ``BudgetExceeded`` is raised; rerunning resumes from the cache.
    ``progress`` is passed to the engine (None: bar on a TTY, False: silent). ``log`` gets
    one line per stage event. Returns a ``BuildSummary``; ``up_to_date`` is true when
    nothing needed doing (no request sent, no stage recomputed).
    """
    config = with_run(config, run)
    rdir = config.path(config.output.dir) / config.output.run
    work = rdir / WORK_DIR
    summary = BuildSummary(run=config.output.run, run_dir=rdir)
    # Everything that can be wrong with the inputs is checked before anything is written.
    tax, templates, bench = check_inputs(config)
    work.mkdir(parents=True, exist_ok=True)
    ctx = _Context(
        config=config,
        run=config.output.run,
        run_dir=rdir,
        work=work,
        markers=Markers(work / "_done"),
        log=log,
        summary=summary,
        ledger=Ledger.load(work / LEDGER_NAME),
    )
    meter: MeteredLLM | None = None
    with _run_lock(work):
        try:
            with (
                _budget_message(lambda: meter, max_cost),
                _engine(config, llm, cache_dir, progress) as engine,
            ):
                meter = MeteredLLM(engine, max_cost, on_progress=lambda: ctx.flush_ledger(meter))
                tax = _stage_syllabi(ctx, tax, meter)
                walk, units = _stage_walk(ctx, tax)
                rows, gstats = _stage_generate(ctx, units, templates, meter)
                kept_path, rej_path = _stage_filter(ctx, rows, meter)
                # -- quality gates: code checks, relevance, judge (builder.quality.hooks) --
                from builder.quality.hooks import stage_quality, stage_semdedup

                kept_path, rej_path = stage_quality(ctx, units, kept_path, rej_path, meter)
            _sync(summary, meter)
            d_paths = _stage_dedup(ctx, kept_path)
            # -- quality gates: semantic near-duplicates after MinHash (builder.quality.hooks) --
            d_paths = stage_semdedup(ctx, d_paths)
            c_paths = _stage_decontam(ctx, d_paths["kept"], bench)
            _stage_assemble(ctx, tax, walk, units, gstats, kept_path, rej_path, d_paths, c_paths)
        finally:
            _sync(summary, meter)
            if meter is not None or summary.stage_seconds:
                ctx.flush_ledger()
    summary.total_cost = ctx.total_ledger().cost_usd
    _fill_counts(summary)
    summary.up_to_date = not ctx.did_work and summary.requests_sent == 0
    return summary


@contextlib.contextmanager
def _run_lock(work: Path) -> Iterator[None]:
    """Hold an exclusive lock on a run while building it (released by the OS on kill -9):
    two builds appending to one generated.jsonl would interleave their rows."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(work / ".build.lock", "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuilderError(
                "another `corpus build` is building this run right now",
                file=work.parent,
                hint="wait for it to finish, or pass --run NAME to build into another run",
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _budget_message(meter: Callable[[], MeteredLLM | None], cap: float | None) -> Iterator[None]:
    """Restate the engine's budget stop in terms of the whole build's --max-cost."""
    try:
        yield
    except BudgetExceeded as exc:
        m = meter()
        if m is None or cap is None:
            raise
        unsent = re.search(r"(\d+) request\(s\) not sent", str(exc))
        raise BudgetExceeded(
            f"--max-cost ${cap:g} reached: this build spent ${m.cost:.4f} on {m.sent} "
            f"request(s)" + (f"; {unsent.group(1)} request(s) not sent" if unsent else ""),
            hint="rerun with a higher --max-cost (or none) to continue; finished work is kept "
            "and cached answers cost nothing",
        ) from None


def _sync(summary: BuildSummary, meter: MeteredLLM | None) -> None:
    if meter is not None:
        summary.cost = meter.cost
        summary.requests_sent = meter.sent
        summary.requests_cached = meter.cached


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


# -- 1. syllabi -------------------------------------------------------------------------------


def _stage_syllabi(ctx: _Context, tax: Taxonomy, llm: MeteredLLM) -> Taxonomy:
    config = ctx.config
    missing = missing_syllabi(tax, config)
    if not missing:
        return tax
    from builder.syllabus import generate_syllabi

    with _stage(ctx, "syllabi"):
        ctx.log(
            f"[syllabi] generating {len(missing)} missing syllabus file(s): {', '.join(missing)}"
        )
        sent_before = llm.sent
        report = generate_syllabi(
            tax,
            llm,
            missing,
            config.syllabus,
            only_missing=True,
            statuses=node_statuses(config),
            strict=False,
            max_cost=llm.remaining(),
        )
        for outcome in report.written:
            ctx.log(f"[syllabi] {outcome}")
        for outcome in report.failed:
            ctx.log(
                f"[syllabi] {outcome.subject}: {outcome.detail} (its topics are walked instead)"
            )
        ctx.summary.syllabi_written = len(report.written)
        ctx.summary.syllabi_failed = [o.subject for o in report.failed]
        if report.written or llm.sent > sent_before:
            ctx.did_work = True
    if report.written:
        return _load_taxonomy(config)  # a fresh object: nothing cached from before the files
    return tax


# -- 2. walk ----------------------------------------------------------------------------------


def _stage_walk(ctx: _Context, tax: Taxonomy) -> tuple[Walk, list[Unit]]:
    with _stage(ctx, "walk"):
        walk, units = walk_units(tax, ctx.config)
        ctx.summary.units = len(units)
        text = "".join(canonical_json(u.to_dict()) + "\n" for u in units)
        path = ctx.work / "units.jsonl"
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)
        used = ", ".join(sorted(walk.syllabi)) or "none"
        ctx.log(f"[walk] {len(units)} unit(s) over {walk.slots} slot(s); syllabi used: {used}")
    return walk, units


# -- 3. generate ------------------------------------------------------------------------------


def _stage_generate(
    ctx: _Context, units: list[Unit], templates: TemplateSet, llm: MeteredLLM
) -> tuple[list[dict[str, Any]], GenerateStats]:
    from builder.generate import GenerateStats, generate, iter_generated

    path = ctx.work / "generated.jsonl"
    stats = GenerateStats()
    with _stage(ctx, "generate"):
        try:
            generate(
                units,
                templates,
                llm,
                ctx.config.generate,
                path,
                max_cost=llm.remaining(),
                stats=stats,
            )
        finally:
            if stats.sent:
                ctx.did_work = True
        ctx.log(
            f"[generate] {stats.planned} request(s) in {stats.waves} wave(s): "
            f"{stats.reused} already done, {stats.sent - stats.cached} sent, "
            f"{stats.cached} from the cache"
        )
        # The rows of this plan only (last row per request id, plan order): rows that an
        # earlier config left in the file (edited prompts, units no longer walked) are ignored.
        rows = list(iter_generated(path, stats.request_ids))
    _fail_if_nothing_answered(rows, stats, llm)
    return rows, stats


def _fail_if_nothing_answered(rows: list[dict[str, Any]], stats: GenerateStats, llm: Any) -> None:
    """Stop when every request of this build failed: a wrong base_url, a stopped server or a
    model name the endpoint does not serve must not end in an empty corpus and exit 0."""
    if not stats.received or any(r.get("status") != "failed" for r in rows):
        return
    errors = Counter(str(r.get("error") or "unknown error") for r in rows)
    first, count = errors.most_common(1)[0]
    raise LLMError(
        f"all {len(rows)} generation request(s) failed (most often: {first} [{count}x])",
        hint="check [llm] base_url and model with `corpus llm check --chat`; finished work "
        "is kept and a rerun retries only the failures",
    )


# -- 4. filter + verify -----------------------------------------------------------------------


def _stage_filter(ctx: _Context, rows: list[dict[str, Any]], llm: MeteredLLM) -> tuple[Path, Path]:
    from builder.filters import filter_documents, rejection_counts

    config = ctx.config
    out = ctx.work / "filtered"
    kept_path, rej_path = out / "kept.parquet", out / "rejected.parquet"
    fingerprint = sha256_hex(
        {
            "rows": _rows_digest(rows),
            "filters": config.filters.model_dump(mode="json"),
            "verify": config.verify.model_dump(mode="json"),
            "model": llm.model_name,  # second samples come from it
        }
    )
    with _stage(ctx, "filter"):
        if ctx.markers.done("filter", fingerprint, [kept_path, rej_path]):
            ctx.log("[filter] up to date")
            return kept_path, rej_path
        ctx.markers.clear("filter")
        kept, rejected = filter_documents(rows, config.filters, config.verify, llm=llm)
        _write_parquet(rows_frame(kept), kept_path)
        _write_parquet(rows_frame(rejected), rej_path)
        reasons = rejection_counts(rejected)
        verified = sum(1 for d in kept if d.get("verified") is True)
        ctx.markers.mark(
            "filter",
            fingerprint,
            rows_in=len(rows),
            kept=len(kept),
            rejected=len(rejected),
            verified=verified,
            reasons=reasons,
        )
        ctx.did_work = True
        ctx.log(
            f"[filter] kept {len(kept)} ({verified} verified), rejected {len(rejected)}"
            + (f": {', '.join(f'{k} {v}' for k, v in reasons.items())}" if reasons else "")
        )
    return kept_path, rej_path


# -- 5. dedup ---------------------------------------------------------------------------------


def _empty_clusters() -> pl.DataFrame:
    from builder.dedup import CLUSTER_COLUMNS

    types = {"removed": pl.Boolean, "cluster_size": pl.Int64, "jaccard": pl.Float64}
    types["matched_jaccard"] = pl.Float64
    return pl.DataFrame(schema={c: types.get(c, pl.String) for c in CLUSTER_COLUMNS})


def _stage_dedup(ctx: _Context, kept_path: Path) -> dict[str, Path]:
    config = ctx.config
    out = ctx.work / "dedup"
    paths = {name: out / f"{name}.parquet" for name in ("kept", "clusters", "removed")}
    fingerprint = sha256_hex(
        {
            "filter": ctx.markers.read("filter").get("fingerprint"),
            "quality": ctx.markers.read("quality").get("fingerprint"),  # quality gates
            "dedup": config.dedup.model_dump(mode="json"),
        }
    )
    with _stage(ctx, "dedup"):
        if ctx.markers.done("dedup", fingerprint, paths.values()):
            ctx.log("[dedup] up to date")
            return paths
        ctx.markers.clear("dedup")
        docs = pl.read_parquet(kept_path)
        stats: dict[str, Any] = {"rows_in": docs.height, "rows_out": docs.height}
        if config.dedup.enabled and docs.height:
            from builder.dedup import dedup_table

            result = dedup_table(docs, config.dedup, text_column="text", id_column="id")
            kept, clusters = result.kept, result.clusters
            assert kept is not None  # dedup_table (in memory) always returns the kept rows
            removed = _removed_documents(result.removed, docs)
            stats = result.stats.to_dict()
            stats.pop("settings", None)
        else:
            kept, clusters, removed = docs, _empty_clusters(), pl.DataFrame()
        _write_parquet(kept, paths["kept"])
        _write_parquet(clusters, paths["clusters"])
        _write_parquet(removed, paths["removed"])
        ctx.markers.mark("dedup", fingerprint, stats=stats)
        ctx.did_work = True
        ctx.log(f"[dedup] kept {kept.height}, removed {removed.height} duplicate(s)")
    return paths


def _removed_documents(removed: pl.DataFrame, docs: pl.DataFrame) -> pl.DataFrame:
    """Dedup's rejection records joined with the documents they drop (for rejected.parquet).

    The cluster's ``kind`` (exact | near) becomes ``dup_kind`` so that ``kind`` stays the
    document's kind, and ``dup_cluster`` names the cluster the document was removed from.
    """
    if removed.height == 0:
        return pl.DataFrame()
    records = removed.rename({"kind": "dup_kind"}) if "kind" in removed.columns else removed
    records = records.with_columns(pl.col("id").cast(pl.String))
    fields = docs.drop(
        [c for c in ("stage", "reason", "detail", "dup_cluster") if c in docs.columns]
    )
    joined = records.join(fields, on="id", how="left", maintain_order="left")
    if "cluster_id" in joined.columns:
        joined = joined.with_columns(pl.col("cluster_id").cast(pl.String).alias("dup_cluster"))
    return joined


# -- 6. decontaminate -------------------------------------------------------------------------


def _stage_decontam(ctx: _Context, kept_path: Path, bench: list[Path]) -> dict[str, Path]:
    config = ctx.config
    out = ctx.work / "decontam"
    paths = {name: out / f"{name}.parquet" for name in ("clean", "hits", "removed")}
    fingerprint = sha256_hex(
        {
            "dedup": ctx.markers.read("dedup").get("fingerprint"),
            "semdedup": ctx.markers.read("semdedup").get("fingerprint"),  # quality gates
            "decontam": config.decontam.model_dump(mode="json"),
            "benchmarks": [[str(p), file_sha256(p)] for p in bench],
        }
    )
    with _stage(ctx, "decontam"):
        if ctx.markers.done("decontam", fingerprint, paths.values()):
            ctx.log("[decontam] up to date")
            return paths
        ctx.markers.clear("decontam")
        docs = pl.read_parquet(kept_path)
        stats: dict[str, Any] = {"rows_in": docs.height, "rows_out": docs.height}
        if bench and docs.height:
            from builder.decontam import decontaminate

            result = decontaminate(docs, bench, config.decontam, text_column="text")
            clean, hits, removed = result.clean, result.hits, result.contaminated
            assert clean is not None  # decontaminate (in memory) always returns the clean rows
            stats = result.stats.to_dict()
            stats.pop("settings", None)
        else:
            from builder.decontam import HIT_COLUMNS

            clean, removed = docs, pl.DataFrame()
            hits = pl.DataFrame(schema=dict.fromkeys(HIT_COLUMNS, pl.String))
            if not bench:
                stats["note"] = "no benchmark files configured"
        _write_parquet(clean, paths["clean"])
        _write_parquet(hits, paths["hits"])
        _write_parquet(removed, paths["removed"])
        ctx.markers.mark("decontam", fingerprint, stats=stats)
        ctx.did_work = True
        ctx.log(f"[decontam] clean {clean.height}, contaminated {removed.height}")
    return paths


# -- 7. assemble, card, report ----------------------------------------------------------------


def _stage_assemble(
    ctx: _Context,
    tax: Taxonomy,
    walk: Walk,
    units: list[Unit],
    gstats: GenerateStats,
    kept_path: Path,
    rej_path: Path,
    d_paths: dict[str, Path],
    c_paths: dict[str, Path],
) -> None:
    from builder.assemble import assemble, verify_run
    from builder.card import write_card
    from builder.report import write_report
    from builder.review.flags import flags_fingerprint

    config = ctx.config
    summary = ctx.summary
    fingerprint = sha256_hex(
        {
            "decontam": ctx.markers.read("decontam").get("fingerprint"),
            "units": file_sha256(ctx.work / "units.jsonl"),
            "config": config.config_hash(),
            "flags": flags_fingerprint(ctx.run_dir),  # curator flags (builder.review.flags)
        }
    )
    outputs = [summary.manifest, summary.card, summary.report]
    with _stage(ctx, "assemble"):
        if ctx.markers.done("assemble", fingerprint, outputs) and not _run_problems(
            verify_run, ctx
        ):
            ctx.log("[assemble] up to date")
            return
        ctx.markers.clear("assemble")
        ctx.log("[assemble] writing shards, manifest, card and report")
        rejected = [
            f
            for f in (
                pl.read_parquet(p) for p in (rej_path, d_paths["removed"], c_paths["removed"])
            )
            if f.height
        ]
        stats = _stats(ctx, walk, units, gstats)
        result = assemble(
            c_paths["clean"],
            pl.concat(rejected, how="diagonal_relaxed") if rejected else None,
            ctx.run_dir,
            config=config,
            extra_manifest={"stats": stats},
        )
        # -- quality gates: diversity per node and the embedding map (builder.quality.hooks) --
        from builder.quality.hooks import quality_summary

        quality = quality_summary(ctx, c_paths["clean"])
        write_card(
            ctx.run_dir,
            config=config,
            manifest=result.manifest,
            stats=stats,
            taxonomy=tax,
            quality=quality,
        )
        from builder.diversity import diversity_report

        before_dedup = pl.read_parquet(kept_path)
        diversity = None
        if before_dedup.height:
            diversity = diversity_report(
                before_dedup,
                pl.read_parquet(d_paths["clusters"]),
                pl.read_parquet(c_paths["hits"]),
                opener_words=config.dedup.opener_words,
            )
            diversity.write(ctx.work / "diversity")
        write_report(
            ctx.run_dir,
            diversity=diversity,
            coverage=walk.coverage(),
            taxonomy=tax,
            stats=stats,
            manifest=result.manifest,
            quality=quality,  # quality gates
        )
        ctx.markers.mark("assemble", fingerprint, documents=result.documents, tokens=result.tokens)
        ctx.did_work = True
        ctx.log(
            f"[assemble] {result.documents} document(s), {result.tokens} tokens in "
            f"{len(result.shards)} shard(s); {result.rejected} rejected"
        )


def _run_problems(verify_run: Callable[[Path], list[str]], ctx: _Context) -> list[str]:
    try:
        return verify_run(ctx.run_dir)
    except Exception as exc:  # noqa: BLE001 - a damaged run directory is rebuilt, not trusted
        return [str(exc)]


def _stats(ctx: _Context, walk: Walk, units: list[Unit], gstats: GenerateStats) -> dict[str, Any]:
    """The ``stats`` the manifest, card and report show (see builder.card)."""
    s = ctx.summary
    ledger = ctx.ledger
    seconds = {
        st: ledger.stage_seconds.get(st, 0.0) + s.stage_seconds.get(st, 0.0)
        for st in STAGES
        if st in ledger.stage_seconds or st in s.stage_seconds
    }
    filt = {k: v for k, v in ctx.markers.read("filter").items() if k != "fingerprint"}
    stages: dict[str, dict[str, Any]] = {st: {"seconds": round(v, 3)} for st, v in seconds.items()}
    stages.setdefault("generate", {})["requests"] = gstats.planned
    return {
        # Totals over every build into this run directory (resumes and rebuilds included).
        "cost_usd": round(ledger.cost_usd + s.cost, 6),
        "seconds": round(sum(seconds.values()), 3),
        "requests_sent": ledger.requests_sent + s.requests_sent,
        "requests_cached": ledger.requests_cached + s.requests_cached,
        "builds": ledger.builds + 1,
        "units": len(units),
        "syllabi_used": len(walk.syllabi),
        "stages": stages,
        "generate": gstats.to_dict(),
        "filter": filt,
        "dedup": ctx.markers.read("dedup").get("stats") or {},
        "decontam": ctx.markers.read("decontam").get("stats") or {},
        "quality": ctx.markers.read("quality").get("stats") or {},  # quality gates
        "semdedup": ctx.markers.read("semdedup").get("stats") or {},  # quality gates
    }


# --------------------------------------------------------------------------- plan


def plan(
    config: CorpusConfig,
    *,
    run: str | None = None,
    cache_dir: str | None = None,
    llm: Any = None,
) -> PlanSummary:
    """Requests, tokens and cost per discipline of building ``config``, sending nothing.

    Counts exactly the syllabus requests of missing syllabi and the first wave of generation
    requests (their rendered prompts), with cache hits. Evolution and second-sample requests
    depend on generated exercises: where the run (``run``, default ``[output] run``) already
    holds them they are rendered exactly, otherwise they are estimated as an upper bound.
    ``llm`` must offer ``estimate(requests)`` and ``model_name`` (default: the configured
    engine, which starts no server for this).
    """
    from builder.generate import plan_requests

    config = with_run(config, run)
    tax, templates, _bench = check_inputs(config)
    missing = missing_syllabi(tax, config)
    _walk, units = walk_units(tax, config)
    requests = plan_requests(units, templates, config.generate)
    # A dry run needs no API key: the cache and the prices do not depend on it.
    keyless = config.llm.model_copy(
        update={
            "api_key_env": None,
            "endpoints": [e.model_copy(update={"api_key_env": None}) for e in config.llm.endpoints],
        }
    )
    offline = config.model_copy(update={"llm": keyless})
    with _engine(offline, llm, cache_dir, False) as engine:
        later, estimated = _later_requests(config, units, templates, requests, engine.model_name)
        syllabus_reqs = _syllabus_requests(tax, config, missing)
        by_disc: dict[str, list[ChatRequest]] = {}
        for r in [*requests, *later]:
            by_disc.setdefault(str(r.metadata.get("discipline") or "?"), []).append(r)
        groups = [(d, by_disc[d]) for d in sorted(by_disc)]
        if syllabus_reqs:
            groups.append(("(syllabi)", syllabus_reqs))
        # -- quality gates: the educational-value judge (builder.quality.hooks) --
        from builder.quality.hooks import plan_judge

        judge_reqs = plan_judge(config, [*requests, *later])
        if judge_reqs:
            groups.append(("(judge)", judge_reqs))
        rows: list[PlanRow] = []
        unpriced: set[str] = set()
        from builder.quality.hooks import estimate_judge  # quality gates

        for name, reqs in groups:
            if name == "(judge)":  # quality gates: the judge may have its own endpoint
                est = estimate_judge(config, reqs, engine, cache_dir)
            else:
                est = engine.estimate(reqs)
            unpriced.update(est.unpriced)
            rows.append(
                PlanRow(
                    name,
                    requests=est.requests,
                    cached=est.cached,
                    input_tokens=int(est.input_tokens),
                    output_tokens=int(est.output_tokens),
                    max_output_tokens=int(est.max_output_tokens),
                    cost=None if est.unpriced else float(est.cost),
                    max_cost=None if est.unpriced else float(est.max_cost),
                )
            )
        checks = sum(1 for r in later if r.metadata.get("purpose") == "second_sample")
        return PlanSummary(
            model=engine.model_name,
            units=len(units),
            rows=rows,
            syllabus_requests=len(syllabus_reqs),
            generation_requests=len(requests),
            transform_requests=len(later) - checks,
            second_sample_requests=checks,
            estimated=estimated,
            missing_syllabi=tuple(missing),
            unpriced=tuple(sorted(unpriced)),
        )


def _syllabus_requests(
    tax: Taxonomy, config: CorpusConfig, missing: list[str]
) -> list[ChatRequest]:
    from builder.syllabus import syllabus_request

    statuses = node_statuses(config)
    return [syllabus_request(tax, sid, config.syllabus, statuses=statuses) for sid in missing]


def _later_requests(
    config: CorpusConfig,
    units: list[Unit],
    templates: TemplateSet,
    first_wave: list[ChatRequest],
    model: str,
) -> tuple[list[ChatRequest], int]:
    """Evolution and second-sample requests of a plan, and how many of them are estimates.

    Exercises that the run already generated (same prompt) give their real follow-up
    requests (so cache hits count); the others give stand-ins of the same size: the parent's
    prompt plus its expected reply in, the follow-up template's ``max_tokens`` out.
    """
    from builder.generate import FINISHED_STATUSES, iter_generated, plan_transforms, prompt_sha256
    from builder.templates import structured_problem

    gen = config.generate
    verify = config.verify
    second = verify.enabled and verify.second_sample
    path = run_dir(config) / WORK_DIR / "generated.jsonl"
    rows = {r["request_id"]: r for r in iter_generated(path)} if path.exists() else {}
    units_by_id = {u.unit_id: u for u in units}
    fraction = config.llm.expected_output_fraction
    transforms = [t for t in templates.transforms() if not gen.templates or t.name in gen.templates]

    def steps_of(t: Any) -> int:
        spec = t.front.transform_of
        return gen.evolution_steps if gen.evolution_steps is not None else spec.steps

    def applies(t: Any, exercise_type: str | None) -> bool:
        spec = t.front.transform_of
        return not spec.exercise_types or exercise_type in spec.exercise_types

    def stand_in(parent: ChatRequest, rid: str, max_tokens: int, metadata: dict) -> ChatRequest:
        reply = " x" * int((parent.params.get("max_tokens") or config.llm.max_tokens) * fraction)
        return ChatRequest(
            id=rid,
            messages=(*parent.messages, {"role": "user", "content": reply}),
            params={"max_tokens": max_tokens},
            metadata=metadata,
        )

    out: list[ChatRequest] = []
    estimated = 0
    wave = first_wave
    step = 1
    while wave:
        parents = []
        for r in wave:
            row = rows.get(r.id)
            if (
                row is not None
                and row.get("status") in FINISHED_STATUSES
                and row.get("prompt_sha256") == prompt_sha256(r, model)
            ):
                parents.append(row)
                ok = row.get("status") == "ok" and not structured_problem(
                    row.get("exercise_type"), row.get("structured")
                )
                if second and ok and row.get("exercise_type") == "quantitative":
                    from builder.verify.quant import second_sample_request

                    req = second_sample_request(row, verify)
                    out.append(
                        ChatRequest(
                            req.id,
                            req.messages,
                            req.params,
                            req.schema,
                            req.sample_index,
                            {**req.metadata, "discipline": row.get("discipline")},
                        )
                    )
                continue
            if r.metadata.get("kind") != "exercise":
                continue
            # Not generated yet: stand-ins for its second sample and its evolutions.
            disc = r.metadata.get("discipline")
            check = {"discipline": disc, "purpose": "second_sample"}
            evolve = {"discipline": disc, "purpose": "evolve"}
            etype = r.metadata.get("exercise_type")
            if second and etype == "quantitative":
                out.append(
                    stand_in(r, f"plan:{r.id}:second", verify.second_sample_max_tokens, check)
                )
                estimated += 1
            if not gen.evolve:
                continue
            done = int(r.metadata.get("evolution_step") or 0)
            for t in transforms:
                if not applies(t, etype) or (done and r.metadata.get("template") != t.name):
                    continue
                max_tokens = gen.max_tokens or t.front.params.max_tokens
                for k in range(done + 1, steps_of(t) + 1):
                    out.append(stand_in(r, f"plan:{r.id}:{t.name}:{k}", max_tokens, evolve))
                    estimated += 1
                    if second and etype == "quantitative":
                        rid = f"plan:{r.id}:{t.name}:{k}:second"
                        out.append(stand_in(r, rid, verify.second_sample_max_tokens, check))
                        estimated += 1
        wave = plan_transforms(parents, units_by_id, templates, gen, step) if gen.evolve else []
        out.extend(wave)
        step += 1
    return out, estimated


__all__ = [
    "STAGES",
    "BuildSummary",
    "Ledger",
    "Markers",
    "MeteredLLM",
    "PlanRow",
    "PlanSummary",
    "benchmark_files",
    "build",
    "check_inputs",
    "missing_syllabi",
    "node_statuses",
    "plan",
    "run_dir",
    "selected_subjects",
    "syllabus_statuses",
    "walk_units",
    "with_run",
]
