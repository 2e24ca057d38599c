"""A run keeps the objects alive at its start (imported libraries, settings) out of the
garbage collector's scans, and hands them back when it ends, also when a stage fails."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import pytest

from builder.config import load_config
from builder.run.build import run_stages
from builder.stages import Stage
from builder.stages.base import RunContext
from builder.util.memory import long_lived_frozen, release_memory
from tests.support.project import make_project


class _Node:
    """A cycle-capable object that ``weakref`` can watch."""

    def __init__(self) -> None:
        self.other: Any = None


class Probe(Stage):
    """Records the collector's frozen count while it runs; fails when told to."""

    name = "probe"
    frozen: list[int] = []
    fail = False

    def outputs(self, ctx: RunContext) -> list[Path]:
        return [self.out_dir(ctx) / "probe.txt"]

    def fingerprint(self, ctx: RunContext) -> str | None:
        return None  # digest of the outputs: run whenever they are missing

    def run(self, ctx: RunContext) -> dict[str, Any]:
        Probe.frozen.append(gc.get_freeze_count())
        if Probe.fail:
            raise RuntimeError("probe failed")
        out = self.outputs(ctx)[0]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("ok\n")
        return {}


def test_a_run_freezes_what_outlives_it_and_hands_it_back(tmp_path: Path) -> None:
    config = load_config(make_project(tmp_path / "p", "http://127.0.0.1:9/v1"))
    assert gc.get_freeze_count() == 0
    Probe.frozen, Probe.fail = [], False
    run_stages(config, [Probe()], progress=False, run="a")
    assert Probe.frozen and Probe.frozen[0] > 1000  # the imported libraries at least
    assert gc.get_freeze_count() == 0
    Probe.fail = True
    with pytest.raises(RuntimeError, match="probe failed"):
        run_stages(config, [Probe()], progress=False, run="b")
    assert len(Probe.frozen) == 2 and Probe.frozen[1] > 1000
    assert gc.get_freeze_count() == 0  # handed back on failure too


def test_cycles_made_inside_are_collected_and_frozen_cycles_after_the_block() -> None:
    before = _Node()
    before.other = _Node()
    before.other.other = before  # a cycle alive when the block starts: frozen
    watch_before = weakref.ref(before)
    with long_lived_frozen():
        with long_lived_frozen():  # nested: freezes once, unfreezes once
            pass
        assert gc.get_freeze_count() > 0
        inside = _Node()
        inside.other = _Node()
        inside.other.other = inside
        watch_inside = weakref.ref(inside)
        del inside, before
        release_memory()
        assert watch_inside() is None  # made during the run: collected as usual
        assert watch_before() is not None  # frozen: waits for the block's end
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert watch_before() is None
