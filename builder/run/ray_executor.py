"""The Ray executor: partitioned stages as Ray tasks on a cluster (``--executor ray``).

Stages run in order on the driver, as with ``LocalExecutor`` (same markers, same
fingerprints, same skip rules). What changes is ``map_partitions``: each task of a
``PartitionStage`` (one input partition; see ``builder.run.partitioned``) runs as a Ray task
with ``max_retries``, reading and writing the run directory directly, which must therefore
be on a filesystem every node sees (NFS, a cluster filesystem; as datatrove and NeMo Curator
require). The driver only submits tasks, records each finished partition and keeps at most
two tasks per cluster CPU in flight. A task writes its files atomically and the same bytes
if run twice, so a task retried after its node was lost leaves no half or doubled partition.

The model stays on the driver (its engine, its SQLite cache, the budget and the counters):
a task that calls ``ctx.llm()`` gets a ``BrokerLLM``, which sends its requests to a small
actor placed on the driver's node; the driver answers them between task completions with
its own engine. Generation (one async client process) never leaves the driver.

Stages that are not partitioned (walk, generate, dedup, decontam, assemble, report) run on
the driver as they do locally, except for their task lists, which run as Ray tasks too
(``map_tasks``; ``task_map`` for dedup): dedup's signature tasks (one piece of the filter's
output each; they write the piece's signatures and bucketed band keys into the stage's
folder) and then its band grouping, a shuffle: one task per bucket reads that bucket's slice
of every piece's band file and returns only the candidate pairs it found, so the band keys
never gather on the driver; decontam's n-gram scan (one task per slice of its input; each
worker loads the benchmark index once and keeps it for the stage's later tasks); assemble's
token counts (one task per slice of the id-sorted documents; the tokenizer is loaded once
per worker). Only hits and counts come back to the driver.

Nothing here imports Ray at module level, and ``builder.run.executor`` imports this module
only when ``ray`` is chosen, so a local build never loads Ray.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from builder.errors import InputError
from builder.run.executor import EXECUTORS, LocalExecutor, Where

if TYPE_CHECKING:  # pragma: no cover
    from builder.config import CorpusConfig
    from builder.llm.base import ChatRequest, ChatResult
    from builder.run.partitioned import PartitionTask
    from builder.stages.base import PartitionStage, RunContext

#: A task lost with its node (or its worker process) is run again this many times.
MAX_RETRIES = 4
#: Object store of a local cluster started for one build: tasks pass only paths and counters.
LOCAL_OBJECT_STORE = 256 * 1024 * 1024
#: Node address of a local cluster (a loopback address; ``127.0.0.1`` is replaced by Ray with
#: the machine's external address, so another one of 127.0.0.0/8 is the default).
DEFAULT_NODE_IP = "127.0.0.2"


def _node_ip(address: str) -> str | None:
    """The address this driver announces: ``CORPUS_RAY_NODE_IP``, else the head's host when
    it is a loopback address (the driver must then be on the same loopback), else Ray's
    choice."""
    if os.environ.get("CORPUS_RAY_NODE_IP"):
        return os.environ["CORPUS_RAY_NODE_IP"]
    host = address.rsplit(":", 1)[0] if ":" in address else ""
    return host if host.startswith("127.") else None


def _messages_to_stderr() -> None:
    """Ray prints cluster messages ("task failed, will be retried" when a node is lost) on
    the driver's stdout; send them to stderr with the build's log, so stdout stays the
    command's output (``corpus build --json``). Ray 2.60's ``print_to_stdstream``; a
    no-op if a later Ray renames it."""
    from ray._private import worker as ray_worker

    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "to_stderr", False):
        return

    def to_stderr(data: dict[str, Any], ignore_prefix: bool) -> None:
        original({**data, "is_err": True}, ignore_prefix)

    to_stderr.to_stderr = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = to_stderr


def connect(address: str) -> bool:
    """Connect this process to Ray; return True when it started Ray (and must shut it down).

    ``auto``: an existing cluster (``RAY_ADDRESS`` or the one ``ray start`` left on this
    machine), else a local single-node cluster on a loopback address. ``host:port``: that
    head node. Already connected (a caller's ``ray.init``): used as it is.
    """
    try:
        import ray
    except ImportError:
        raise InputError(
            "--executor ray needs Ray, which is not installed",
            hint="pip install 'curriculum-corpus-builder[ray]' (ray[data]==2.60.0)",
        ) from None

    _messages_to_stderr()
    if ray.is_initialized():
        return False
    quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address == "auto":
        try:
            ray.init(address="auto", **quiet)
            return True
        except ConnectionError:
            pass
        ip = os.environ.get("CORPUS_RAY_NODE_IP", DEFAULT_NODE_IP)
        ray.init(
            address="local",
            _node_ip_address=ip,
            num_cpus=os.cpu_count() or 1,
            object_store_memory=LOCAL_OBJECT_STORE,
            include_dashboard=False,
            **quiet,
        )
        return True
    try:
        ray.init(address=address, _node_ip_address=_node_ip(address), **quiet)
    except ConnectionError as exc:
        raise InputError(
            f"cannot reach the Ray cluster at {address}: {exc}",
            hint="start it with `ray start --head`, or use --ray-address auto",
        ) from None
    return True


class _Broker:
    """An actor in front of the driver's engine: tasks put requests, the driver answers.

    Pinned to the driver's node and restarted if it dies anyway (its callers' requests are
    then resent by Ray); keys are unique across restarts, so an answer meant for a call of
    an earlier incarnation is dropped rather than handed to another call.
    """

    def __init__(self) -> None:
        import asyncio

        self._queue: asyncio.Queue[tuple[str, list[Any]]] = asyncio.Queue()
        self._waiting: dict[str, Any] = {}

    async def call(self, requests: list[Any], endpoint: str = "llm") -> list[Any]:
        import asyncio
        import uuid

        key = uuid.uuid4().hex
        future = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        await self._queue.put((key, endpoint, requests))
        return await future

    async def next_call(self) -> tuple[str, str, list[Any]]:
        return await self._queue.get()

    async def answer(self, key: str, results: list[Any]) -> None:
        future = self._waiting.pop(key, None)
        if future is not None and not future.done():
            future.set_result(results)


class BrokerLLM:
    """What ``ctx.llm()`` (``endpoint`` "llm") or ``ctx.judge_llm()`` ("judge") is inside a
    Ray task: the driver's engine for that endpoint, reached through the broker actor
    (``run`` and ``complete`` as ``builder.llm.base.LLM``). The driver's engines keep one
    concurrency window, cache and ``--max-cost`` meter per endpoint for the whole cluster."""

    def __init__(self, broker: Any, model_name: str, endpoint: str = "llm") -> None:
        self.broker = broker
        self.model_name = model_name
        self.endpoint = endpoint

    def run(self, requests: Iterable[ChatRequest], **_: Any) -> Iterator[ChatResult]:
        import ray

        batch = list(requests)
        if batch:
            yield from ray.get(self.broker.call.remote(batch, self.endpoint))

    def complete(self, request: ChatRequest) -> ChatResult:
        return next(iter(self.run([request])))


def _traced(fn: Any, item: Any) -> tuple[int, str, Any]:
    """``fn(item)`` in a Ray task, with the worker's pid and node id."""
    import ray

    return os.getpid(), ray.get_runtime_context().get_node_id(), fn(item)


def _run_remote(stage: PartitionStage, ctx: RunContext, task: PartitionTask) -> dict[str, Any]:
    from builder.run.partitioned import run_task

    return run_task(stage, ctx, task)


@functools.cache
def _remote_task() -> Any:
    import ray

    return ray.remote(_run_remote)


@functools.cache
def _remote(fn: Any) -> Any:
    import ray

    return ray.remote(fn)


@functools.cache
def _broker_actor() -> Any:
    import ray

    return ray.remote(_Broker)


class RayExecutor(LocalExecutor):
    """Partitioned stages as Ray tasks; everything else as ``LocalExecutor`` (see above)."""

    name = "ray"
    can_follow = False  # the cluster maps the stages' tasks once the stage before is done

    def __init__(self, config: CorpusConfig | None = None) -> None:
        super().__init__(config)
        self.address = config.run.ray_address if config is not None else "auto"
        self._started = False
        self._connected = False

    def _connect(self) -> None:
        if not self._connected:
            self._started = connect(self.address)
            self._connected = True

    def map_partitions(
        self, stage: PartitionStage, ctx: RunContext, tasks: Iterable[PartitionTask]
    ) -> Iterator[tuple[PartitionTask, dict[str, Any]]]:
        """Submit each task as a Ray task (two per cluster CPU in flight), answer model
        calls from the tasks, and yield each task with its result as it finishes."""
        queue = deque(tasks)
        if not queue:
            return
        self._connect()
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        broker = None
        if stage.uses_llm:
            here = ray.get_runtime_context().get_node_id()
            broker = (
                _broker_actor()
                .options(
                    num_cpus=0,
                    max_restarts=-1,
                    max_task_retries=-1,
                    # Hard: soft affinity lets Ray put it on a busy cluster's other nodes.
                    scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
                )
                .remote()
            )
        stage_ref = ray.put(stage)
        client = functools.partial(BrokerLLM, broker) if broker is not None else None
        ctx_ref = ray.put(ctx.for_worker(client))
        remote = _remote_task().options(num_cpus=1, max_retries=MAX_RETRIES)
        limit = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        pending: dict[Any, PartitionTask] = {}
        serving = broker.next_call.remote() if broker is not None else None
        try:
            while queue or pending:
                while queue and len(pending) < limit:
                    task = queue.popleft()
                    pending[remote.remote(stage_ref, ctx_ref, task)] = task
                waiting = list(pending) + ([serving] if serving is not None else [])
                ready, _ = ray.wait(waiting, num_returns=1)
                ref = ready[0]
                if serving is not None and ref == serving:
                    key, endpoint, requests = ray.get(ref)
                    results = list(ctx.endpoint_llm(endpoint).run(requests))
                    broker.answer.remote(key, results)
                    serving = broker.next_call.remote()
                    continue
                task = pending.pop(ref)
                yield task, _get(ref)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if broker is not None:
                if serving is not None:
                    ray.cancel(serving)  # else Ray retries it on the killed actor, noisily
                ray.kill(broker, no_restart=True)

    @property
    def task_map(self) -> Any:
        """``fn, items -> results as they finish``, as Ray tasks (dedup's signature and
        band-bucket tasks; the local executor leaves dedup its own pool)."""
        return self.map_tasks

    def map_tasks(
        self, fn: Any, items: Iterable[Any], *, where: Where | None = None
    ) -> Iterator[Any]:
        """Run ``fn`` (a module-level function) over ``items`` as Ray tasks with
        ``max_retries``, two per cluster CPU in flight; yield results as they finish.
        ``where(pid, node id)`` is told which worker process, on which node, ran each."""
        queue = deque(items)
        if not queue:
            return
        self._connect()
        import ray

        if where is None:
            remote = _remote(fn).options(num_cpus=1, max_retries=MAX_RETRIES)
            args: tuple[Any, ...] = ()
        else:
            remote = _remote(_traced).options(num_cpus=1, max_retries=MAX_RETRIES)
            args = (fn,)
        limit = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        pending: set[Any] = set()
        try:
            while queue or pending:
                while queue and len(pending) < limit:
                    pending.add(remote.remote(*args, queue.popleft()))
                ready, _ = ray.wait(list(pending), num_returns=1)
                pending.discard(ready[0])
                result = _get(ready[0])
                if where is not None:
                    pid, node, result = result
                    where(pid, node)
                yield result
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def close(self) -> None:
        """Disconnect (and stop the local cluster) when this executor started Ray."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False
        self._connected = False


def _get(ref: Any) -> Any:
    """``ray.get``, re-raising a task's own exception (a user error stays one line)."""
    import ray
    from ray.exceptions import RayTaskError

    try:
        return ray.get(ref)
    except RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise


EXECUTORS["ray"] = RayExecutor
