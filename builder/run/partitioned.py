"""Partitioned stages run input partition by input partition, on any executor.

A ``PartitionStage`` is cut into **tasks**, one per input partition file. A task reads its
file in batches of exactly ``batch_rows`` rows (the last one shorter), hands each batch to
``run_partition`` and writes what it returns for each sink as one output partition.
``batch_rows`` is ``[run] partition_rows``, lowered for a file whose rows are large so that a
batch (and so an output partition) stays under ``[run] partition_mb``: the file's
uncompressed bytes per row are read from its footer. Output names follow from the input's
identity alone: batch ``j`` of the file
whose batches start at global batch ``b`` is ``part-<b + j>.parquet``, and ``b`` is
counted from the Parquet footers of the files before it (no data is read to plan). So the
same inputs give the same files, byte for byte, whichever executor ran the tasks and in
whatever order they finished (``run_task`` is a pure function of the stage, the settings
and one input file).

Each finished task is recorded in ``work/<stage>/_partitions/<n>.json`` (its identity: the
stage's ``task_fingerprint``, the input's name, bytes (sha256) and row count, where its
outputs start, the batch size; the files it wrote; its counters) by the driver once the
task's files are in place. The identity hashes the input file itself rather than the
upstream stage's fingerprint, so it is known as soon as that one file is written: a
``builder.run.follow.Follower`` runs tasks while the stage before is still running, and the
stage later skips them like the finished tasks of an interrupted run. A rerun after a crash skips a
task whose record matches and whose files exist, so a resumed stage redoes only unfinished
partitions. A task writes each file atomically (temp, fsync, rename) and writes the same
bytes if run twice (a retried Ray task), so no partition is ever half written or different.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from builder.records import sha256_hex, to_table
from builder.util.faults import fault_point
from builder.util.files import atomic_write_text, file_sha256, remove_temp_files
from builder.util.partitions import list_parts, part_name, write_table

if TYPE_CHECKING:  # pragma: no cover
    from builder.stages.base import PartitionStage, RunContext

#: Folder (under ``work/<stage>/``) of the per-task records.
RECORDS = "_partitions"


@dataclass(frozen=True)
class PartitionTask:
    """One input partition of a stage: what to read, where its outputs start, its identity."""

    index: int
    source: str
    rows: int
    first_part: int
    batches: int
    identity: str
    batch_rows: int


def _batches_of(rows: int, batch_rows: int) -> int:
    return math.ceil(rows / batch_rows) if rows else 0


def batch_rows_for(meta: pq.FileMetaData, max_rows: int, max_bytes: int) -> int:
    """Rows per batch of one input file: at most ``max_rows``, and few enough that a batch
    stays under ``max_bytes`` in memory. The footer's uncompressed bytes per row only
    estimate Arrow's size (dictionary-encoded columns grow when decoded, and a stage may add
    columns), so a batch aims at half the bound."""
    rows = meta.num_rows
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if rows == 0 or size <= 0:
        return max_rows
    return max(1, min(max_rows, int(max_bytes * rows // (2 * size))))


def make_task(
    ctx: RunContext, task_fingerprint: str | None, index: int, path: Path, first: int
) -> PartitionTask:
    """Task ``index`` of a stage: input file ``path``, its outputs numbered from ``first``
    (the batches of the files before it). Reads the file's footer and hashes its bytes."""
    run = ctx.config.run
    meta = pq.ParquetFile(path).metadata
    rows = meta.num_rows
    batch_rows = batch_rows_for(meta, run.partition_rows, run.partition_bytes)
    batches = _batches_of(rows, batch_rows)
    identity = sha256_hex([task_fingerprint, path.name, _digest(path), rows, first, batch_rows])
    return PartitionTask(index, str(path), rows, first, batches, identity, batch_rows)


#: sha256 of input files by (path, inode, size, mtime): a follower and then the stage plan
#: the same task in one process; a file rewritten (atomically: a new inode) is hashed again.
_DIGESTS: dict[tuple[str, int, int, int], str] = {}


def _digest(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    digest = _DIGESTS.get(key)
    if digest is None:
        if len(_DIGESTS) >= 4096:
            _DIGESTS.clear()
        digest = _DIGESTS[key] = file_sha256(path)
    return digest


def plan_tasks(stage: PartitionStage, ctx: RunContext) -> list[PartitionTask]:
    """The stage's tasks in input order (from the input footers and bytes)."""
    task_fingerprint = stage.task_fingerprint(ctx)
    tasks: list[PartitionTask] = []
    first = 0
    for i, path in enumerate(stage.input_parts(ctx)):
        task = make_task(ctx, task_fingerprint, i, path, first)
        tasks.append(task)
        first += task.batches
    return tasks


def exact_batches(path: str | Path, batch_rows: int) -> Iterator[pa.Table]:
    """Tables of exactly ``batch_rows`` rows (the last one shorter) from one Parquet file,
    whatever its row groups: the batch boundaries depend on the row count alone."""
    held: list[pa.Table] = []
    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        table = pa.Table.from_batches([batch])
        while table.num_rows:
            take = min(batch_rows - n, table.num_rows)
            held.append(table.slice(0, take))
            n += take
            table = table.slice(take)
            if n == batch_rows:
                yield pa.concat_tables(held)
                held, n = [], 0
    if n:
        yield pa.concat_tables(held)


def run_task(stage: PartitionStage, ctx: RunContext, task: PartitionTask) -> dict[str, Any]:
    """Run ``stage`` over one input partition and write its output partitions; return the
    task's counters and the files it wrote. Runs on the driver or on a Ray worker."""
    batch_rows = task.batch_rows
    sinks = stage.sinks()
    counters: dict[str, Any] = {"rows_in": 0, "partitions_in": 0, "max_rows_held": 0}
    written: dict[str, list[str]] = {name: [] for name in sinks}
    for name in sinks:
        counters[f"rows_{name}"] = 0
    for j, table in enumerate(exact_batches(task.source, batch_rows)):
        counters["rows_in"] += table.num_rows
        counters["partitions_in"] += 1
        held = table.num_rows
        for name, rows in stage.run_partition(ctx, table).items():
            out = to_table(rows, sinks[name])
            held = max(held, out.num_rows)
            if out.num_rows == 0:
                continue
            target = stage.sink_dir(ctx, name) / part_name(task.first_part + j)
            write_table(out, target)
            written[name].append(target.name)
            counters[f"rows_{name}"] += out.num_rows
        counters["max_rows_held"] = max(counters["max_rows_held"], held)
    counters.update(stage.task_counters())
    return {"counters": counters, "outputs": written}


def merge_counters(total: dict[str, Any], part: dict[str, Any]) -> None:
    """Add one task's counters into ``total``: numbers add up (``max_*`` take the largest),
    dicts merge key by key."""
    for key, value in part.items():
        if isinstance(value, dict):
            merge_counters(total.setdefault(key, {}), value)
        elif isinstance(value, bool) or not isinstance(value, int | float):
            total[key] = value
        elif key.startswith("max_"):
            total[key] = max(total.get(key, value), value)
        else:
            total[key] = total.get(key, 0) + value


def _record_path(stage: PartitionStage, ctx: RunContext, task: PartitionTask) -> Path:
    return stage.out_dir(ctx) / RECORDS / f"{task.index:05d}.json"


def prepare_dirs(stage: PartitionStage, ctx: RunContext) -> None:
    """Create the stage's sink folders and its task records' folder."""
    for name in stage.sinks():
        stage.sink_dir(ctx, name).mkdir(parents=True, exist_ok=True)
    (stage.out_dir(ctx) / RECORDS).mkdir(parents=True, exist_ok=True)


def record_task(
    stage: PartitionStage, ctx: RunContext, task: PartitionTask, result: dict[str, Any]
) -> dict[str, Any]:
    """Write the record of a finished task (its files are in place); return it."""
    record = {"identity": task.identity, "task": asdict(task), **result}
    atomic_write_text(_record_path(stage, ctx, task), json.dumps(record, sort_keys=True))
    return record


def finished(stage: PartitionStage, ctx: RunContext, task: PartitionTask) -> dict | None:
    """The task's record when it finished with this identity and its files still exist."""
    try:
        record = json.loads(_record_path(stage, ctx, task).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("identity") != task.identity:
        return None
    outputs = record.get("outputs") or {}
    for name in stage.sinks():
        if not all((stage.sink_dir(ctx, name) / f).exists() for f in outputs.get(name, [])):
            return None
    return record


def _remove_stale(
    stage: PartitionStage, ctx: RunContext, keep: dict[str, set[str]], n: int
) -> None:
    """Drop output partitions and records that this run's tasks did not produce (left by an
    earlier run over other inputs), and the temp files of tasks killed mid-write (a lost
    node, ``kill -9``), so each sink holds exactly this run's partitions."""
    for name in stage.sinks():
        for p in list_parts(stage.sink_dir(ctx, name)):
            if p.name not in keep[name]:
                p.unlink()
        remove_temp_files(stage.sink_dir(ctx, name))
    records = stage.out_dir(ctx) / RECORDS
    if records.is_dir():
        for p in records.glob("*.json"):
            if not p.stem.isdigit() or int(p.stem) >= n:
                p.unlink()


def run_partitioned(stage: PartitionStage, ctx: RunContext) -> dict[str, Any]:
    """``PartitionStage.run``: plan the tasks, skip the finished ones, map the rest with
    ``ctx.executor`` (the local executor when none is set), record each as it finishes."""
    executor = ctx.runner()
    fingerprint = stage.task_fingerprint(ctx)
    tasks = plan_tasks(stage, ctx)
    prepare_dirs(stage, ctx)
    results: dict[int, dict[str, Any]] = {}
    todo: list[PartitionTask] = []
    for task in tasks:
        # A stage without a fingerprint cannot tell changed inputs: it redoes every task.
        record = finished(stage, ctx, task) if fingerprint is not None else None
        if record is None:
            todo.append(task)
        else:
            results[task.index] = record
    skipped = len(results)
    # of those, the ones a follower ran while the stage before was running
    followed = sum(bool(record.get("followed")) for record in results.values())
    done = skipped
    step = max(1, len(tasks) // 20)
    for task, result in executor.map_partitions(stage, ctx, todo):
        results[task.index] = record_task(stage, ctx, task, result)
        done += 1
        if done % step == 0 or done == len(tasks):
            ctx.log(f"[{stage.name}] partition {done}/{len(tasks)} done ({executor.name})")
        fault_point("partition.done")
    counters: dict[str, Any] = {"rows_in": 0, "partitions_in": 0}
    keep: dict[str, set[str]] = {name: set() for name in stage.sinks()}
    for index in sorted(results):
        merge_counters(counters, results[index]["counters"])
        for name, files in (results[index].get("outputs") or {}).items():
            keep.setdefault(name, set()).update(files)
    _remove_stale(stage, ctx, keep, len(tasks))
    for name, schema in stage.sinks().items():
        counters.setdefault(f"rows_{name}", 0)
        if not keep[name]:
            # An empty output is still an output: one empty partition keeps the schema.
            write_table(schema.empty_table(), stage.sink_dir(ctx, name) / part_name(0))
            keep[name].add(part_name(0))
        counters[f"parts_{name}"] = len(keep[name])
    counters.setdefault("max_rows_held", 0)
    stage.max_rows_seen = counters["max_rows_held"]
    counters["partitions_skipped"] = skipped
    counters["partitions_run"] = len(todo)
    counters["partitions_followed"] = followed
    stage.finish(ctx, counters)
    return counters
