"""Planning generation requests in another process, one unit partition ahead.

Rendering a request's prompts, serialising its bodies and hashing its cache keys cost more
CPU than sending it (about a third of the generate stage's per-request work), and all of it
ran on the thread that also drives the engine: one core, under the GIL. ``Planner`` hands
the generate stage the plan of unit partition ``k`` while a spawned process (never forked:
the engine has threads) already plans partition ``k + 1`` into ``PreparedRequest``s, so
the engine's thread only looks them up and sends them. The first partition is planned here
(the process is still starting), and so is any partition whose plan the process could not
make or made from other template files: the requests are the same either way, since both
sides run ``plan_requests`` and ``prepare`` on the same inputs (checked by the templates'
sha256 and the engine's ``prepare_signature``). At most one plan waits in memory.

The trade (measured on 2 CPUs, bench/RESULTS.md): the engine's process spends ~60 us less
CPU per request and the planning process ~100 us more (the plan itself, pickling, its own
start). That pays only when a core would otherwise idle: with the model served elsewhere
and 3 or more CPUs, the engine's thread (the stage's bottleneck) does about a quarter less
work. On 2 CPUs shared with a local endpoint (bench/build_scale.py) the endpoint already
takes half of the second core, the planning process makes that core the bottleneck, and the
stage spends ~20% more CPU for no shorter wall time; so ``[run] workers = 0`` (auto) plans
here on fewer than 3 CPUs, and ``workers >= 2`` asks for the planning process anyway.
Requests planned here are prepared with the plan as well (``prepare_plan``): the messages
are escaped once for the bodies, the cache keys and the prompt hash.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import pickle
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.generate import plan_requests, prompt_sha256
from builder.llm.endpoint import (
    Endpoint,
    PreparedRequest,
    messages_json,
    prepare,
    prepare_signature,
)
from builder.records import ChatRequest, Unit
from builder.settings.generate import GenerateSettings
from builder.settings.llm import LLMSettings

if TYPE_CHECKING:  # pragma: no cover
    from builder.templates import TemplateSet

#: the template set a planning process loaded, by directory (loaded once per process)
_TEMPLATES: dict[str, TemplateSet] = {}

#: the cyclic garbage collector's thresholds while requests are planned and sent: a
#: request's rows, dicts and strings are freed by reference counting, so the collector
#: (every 700 allocations by default, each full pass walking every live object) finds
#: nothing but costs ~10% of the generate stage's CPU
FEW_COLLECTIONS = (50_000, 50, 1_000)


@contextlib.contextmanager
def few_collections() -> Iterator[None]:
    """Run the block with ``FEW_COLLECTIONS`` thresholds, then restore the caller's."""
    before = gc.get_threshold()
    gc.set_threshold(*FEW_COLLECTIONS)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def prepare_plan(
    requests: list[ChatRequest],
    endpoints: list[Endpoint],
    settings: LLMSettings,
    model: str,
) -> list[ChatRequest]:
    """``requests`` as ``PreparedRequest``s for ``endpoints`` and ``settings`` (those the
    engine refuses stay plain requests: the engine reports them)."""
    signature = prepare_signature(endpoints, settings)
    out: list[ChatRequest] = []
    for r in requests:
        messages = messages_json(r.messages)  # escaped once: bodies, keys and prompt hash
        try:
            prep = prepare(endpoints, r, settings, messages)
        except ValueError:
            out.append(r)
            continue
        out.append(
            PreparedRequest(
                id=r.id,
                messages=r.messages,
                params=r.params,
                schema=r.schema,
                sample_index=r.sample_index,
                metadata=r.metadata,
                bodies=tuple(prep.bodies),
                keys=tuple(prep.keys),
                signature=signature,
                prompt_sha256=(model, prompt_sha256(r, model, messages[1])),
            )
        )
    return out


def plan_partition(
    units_path: str,
    templates_dir: str,
    generate: GenerateSettings,
    endpoints: list[tuple[str, str, str]],
    settings: LLMSettings,
    model: str,
) -> bytes:
    """The prepared first-wave plan of one unit partition and the sha256 of every template
    it was made from (what the caller compares with its own), pickled: the caller unpickles
    it with the collector off (see ``Planner.plan``). Runs in the planning process."""
    from builder.stages.walk import read_units
    from builder.templates import load_templates

    with few_collections():
        templates = _TEMPLATES.get(templates_dir)
        if templates is None:
            _TEMPLATES.clear()
            templates = _TEMPLATES[templates_dir] = load_templates(templates_dir)
        eps = [
            Endpoint(base_url="http://127.0.0.1/v1", model=m, kind=kind, cache_url=url)
            for kind, m, url in endpoints
        ]
        requests = plan_requests(read_units(Path(units_path)), templates, generate)
        plan = prepare_plan(requests, eps, settings, model)
        return pickle.dumps((_shas(templates), plan), protocol=pickle.HIGHEST_PROTOCOL)


def plan_ahead(workers: int, cpus: int | None = None) -> bool:
    """Whether ``[run] workers`` asks for a planning process (0: auto, by the CPU count)."""
    if workers == 0:
        return (cpus if cpus is not None else os.cpu_count() or 1) >= 3
    return workers >= 2


def _planning_process_init(parent: int) -> None:
    """Initializer of the planning process: ignore Ctrl-C and get SIGKILL when the build
    dies (``builder.run.pool.die_with_parent``); and exit at once if the build died before
    that could take effect (a ``kill -9`` while this process was still starting), which
    would otherwise leave it waiting forever on a task queue it holds both ends of."""
    from builder.run.pool import die_with_parent

    die_with_parent(parent)


def _shas(templates: TemplateSet) -> dict[str, str]:
    return {t.name: t.sha256 for t in templates}


class Planner:
    """The first-wave plans of a run's unit partitions, in order (see the module doc).

    ``ahead`` False plans every partition here (``[run] workers = 1``, a single partition,
    or an LLM that is not the engine). ``engine`` (None: an LLM that is not the engine,
    whose requests stay plain) is who prepares the requests for. ``plan(k, units)`` must be
    called for k = 0, 1, ...
    """

    def __init__(
        self,
        parts: list[Path],
        templates: TemplateSet,
        templates_dir: Path,
        generate: GenerateSettings,
        engine: Any,
        *,
        ahead: bool,
        log: Callable[[str], None],
    ) -> None:
        self.parts = parts
        self.templates = templates
        self.templates_dir = str(templates_dir)
        self.generate = generate
        self.engine = engine
        self.log = log
        self.pool: ProcessPoolExecutor | None = None
        self.taken = 0  # plans taken from the planning process
        self.pending: dict[int, Future[bytes]] = {}
        if ahead and len(parts) > 1:
            self.pool = ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_planning_process_init,
                initargs=(os.getpid(),),
            )

    def _submit(self, k: int) -> None:
        if self.pool is None or k >= len(self.parts) or k in self.pending:
            return
        eps = [(ep.kind, ep.model, ep.cache_url) for ep in self.engine.endpoints]
        self.pending[k] = self.pool.submit(
            plan_partition,
            str(self.parts[k]),
            self.templates_dir,
            self.generate,
            eps,
            self.engine.settings,
            self.engine.model_name,
        )

    def plan(self, k: int, units: list[Unit]) -> list[ChatRequest]:
        """The first wave of unit partition ``k`` (whose units are ``units``)."""
        self._submit(k + 1)
        future = self.pending.pop(k, None)
        if future is not None:
            try:
                data = future.result()
                enabled = gc.isenabled()
                gc.disable()  # tens of thousands of new objects, none of them garbage
                try:
                    shas, requests = pickle.loads(data)
                finally:
                    if enabled:
                        gc.enable()
            except Exception as exc:  # the same plan is made here (and its error raised)
                self.log(f"[generate] planning process failed ({exc!r}); planning here")
                self.close()
            else:
                if shas == _shas(self.templates):
                    self.taken += 1
                    return requests
        requests = plan_requests(units, self.templates, self.generate)
        if self.engine is None:
            return requests
        # prepared here too: the messages are escaped once for bodies, keys and prompt hash
        return prepare_plan(
            requests, self.engine.endpoints, self.engine.settings, self.engine.model_name
        )

    def close(self, wait: bool = False) -> None:
        """Stop the planning process (plans not taken are dropped); ``wait``: until it has
        exited (it is idle once every plan was taken)."""
        if self.pool is not None:
            self.pool.shutdown(wait=wait, cancel_futures=True)
            self.pool = None
        self.pending.clear()
