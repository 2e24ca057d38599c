"""Writing an export directory: shards into a staging directory, then one swap into place.

Each input shard's rows are appended, a few thousand at a time, to at most one open file
per split, so memory holds one slice of rows, not a shard's worth of built rows.
An export is a directory (``data/<split>-NNNNN-of-NNNNN.parquet|jsonl``, ``README.md``,
``export.json``). It is built whole in ``.<name>.export-tmp`` next to the target and moved
in with renames at the end, so a reader (or ``datasets.load_dataset``) never sees a mix of
two exports, and a killed export leaves the previous one untouched (the next run clears the
leftovers). ``export.json`` marks a directory as ours: an existing directory without it is
never replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from builder.errors import InputError
from builder.taxonomy.files import atomic_write_text

MARKER = "export.json"
DATA_DIR = "data"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class ExportWriter:
    """Collects shards per split in a staging directory; ``commit`` moves it to ``out``."""

    def __init__(self, out: Path, *, jsonl: bool) -> None:
        self.out = out
        self.ext = "jsonl" if jsonl else "parquet"
        self.staging = out.parent / f".{out.name}.export-tmp"
        self.old = out.parent / f".{out.name}.export-old"
        self.parts: dict[str, list[Path]] = {}
        self.rows: dict[str, int] = {}
        self._open: dict[str, Any] = {}  # split -> open ParquetWriter or text file
        self._check_target()
        for leftover in (self.staging, self.old):
            if leftover.exists():
                shutil.rmtree(leftover)
        (self.staging / DATA_DIR).mkdir(parents=True)

    def _check_target(self) -> None:
        out = self.out
        if out.exists() and not out.is_dir():
            raise InputError(f"{out} exists and is not a directory", hint="choose another -o")
        if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
            raise InputError(
                f"{out} is not empty and holds no {MARKER}: not an export, so it is left alone",
                hint="choose another -o, or remove that directory first",
            )

    def write(self, split: str, table: pa.Table) -> None:
        """Append rows to ``split``'s shard for the current input shard (opened on first
        rows, so an input shard with none for a split makes no file)."""
        if table.num_rows == 0:
            return
        sink = self._open.get(split)
        if sink is None:
            parts = self.parts.setdefault(split, [])
            path = self.staging / DATA_DIR / f".{split}-{len(parts):05d}.{self.ext}"
            parts.append(path)
            if self.ext == "parquet":
                sink = pq.ParquetWriter(path, table.schema, compression="zstd")
            else:
                sink = open(path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
            self._open[split] = sink
        if self.ext == "parquet":
            sink.write_table(table)
        else:
            sink.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in table.to_pylist()))
        self.rows[split] = self.rows.get(split, 0) + table.num_rows

    def end_shard(self) -> None:
        """Close the shards of the current input shard (data synced to disk)."""
        for split, sink in self._open.items():
            sink.close()
            with open(self.parts[split][-1], "rb") as f:
                os.fsync(f.fileno())
        self._open = {}

    def finish_names(self) -> dict[str, list[str]]:
        """Give every shard its final ``split-NNNNN-of-NNNNN`` name; returns them per split
        (relative to the export directory)."""
        names: dict[str, list[str]] = {}
        for split, parts in self.parts.items():
            for i, part in enumerate(parts):
                name = f"{split}-{i:05d}-of-{len(parts):05d}.{self.ext}"
                part.rename(part.with_name(name))
                names.setdefault(split, []).append(f"{DATA_DIR}/{name}")
        return names

    def write_text(self, name: str, text: str) -> None:
        atomic_write_text(self.staging / name, text)

    def write_marker(self, data: dict[str, Any]) -> None:
        text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        self.write_text(MARKER, text)

    def commit(self) -> None:
        """Swap the staging directory in for ``out`` (the old export is removed after)."""
        _fsync_dir(self.staging / DATA_DIR)
        _fsync_dir(self.staging)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if self.out.exists():
            os.rename(self.out, self.old)
        os.rename(self.staging, self.out)
        _fsync_dir(self.out.parent)
        if self.old.exists():
            shutil.rmtree(self.old)

    def abort(self) -> None:
        for sink in self._open.values():
            with contextlib.suppress(Exception):
                sink.close()
        self._open = {}
        shutil.rmtree(self.staging, ignore_errors=True)
