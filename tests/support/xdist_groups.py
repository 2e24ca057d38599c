"""Which tests must share a pytest-xdist worker, and a scheduler that keeps them together.

Under ``make test`` (``-n 2 --dist loadgroup``) tests are spread one by one over the workers,
except those that share a module- or class-scoped fixture (a built project, a cluster, a
server): those run on one worker, so the fixture is made once. ``group_of`` works the groups
out from the fixtures each test uses: within a module, two tests are in one group when they
share such a fixture (directly or through other tests), so a module's tests that share none
still spread. An explicit ``pytest.mark.xdist_group(name)`` wins.

Why a scheduler of our own: pytest-xdist 3.8's ``loadgroup`` tells the controller a test's
group by appending ``@<group>`` to its node id, which pytest 9.2 (structured node ids) no
longer lets a plugin change, so the groups are silently dropped (pytest-xdist issue #1386) and
every worker builds every module fixture again. Here the workers write their groups to a file
(``pytest_configure_node`` tells them where) and ``GroupScheduling`` reads them: the same
scheduling as ``loadgroup``, without touching node ids.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

WORKERINPUT_KEY = "suite_xdist_groups_dir"

#: The files with the longest units of work (a cluster, subprocess builds), slowest first, as
#: measured with ``--durations``: their units are handed out before all others, so no long
#: unit starts near the end of the run while the other worker runs out of work.
FIRST = (
    "tests/test_ray_executor.py",
    "tests/test_pipeline_kill.py",
    "tests/test_local_pool.py",
    "tests/test_reasoning.py",
    "tests/test_pipeline.py",
    "tests/test_quality_cli.py",
    "tests/test_quality_build.py",
    "tests/test_stages.py",
)


def group_of(items: Sequence[pytest.Item]) -> dict[str, str]:
    """``{nodeid: group}`` for the tests that must share a worker (the others are absent)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    explicit: dict[str, str] = {}
    shared: dict[str, list[str]] = {}  # nodeid -> its module's shared-fixture nodes
    for item in items:
        mark = item.get_closest_marker("xdist_group")
        if mark is not None:
            explicit[item.nodeid] = str(mark.args[0] if mark.args else mark.kwargs["name"])
            continue
        info: Any = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.items() if info is not None else ()
        module = item.module.__name__  # type: ignore[attr-defined]
        keys = [f"{module}::{name}" for name, d in defs if d and d[-1].scope in ("module", "class")]
        if keys:
            shared[item.nodeid] = keys
            for key in keys[1:]:
                parent[find(key)] = find(keys[0])
    groups = {nodeid: find(keys[0]) for nodeid, keys in shared.items()}
    return {**groups, **explicit}


def write_groups(items: Sequence[pytest.Item], directory: Path, worker: str) -> None:
    """Save this worker's ``{nodeid: group}`` for the controller's scheduler."""
    (directory / f"{worker}.json").write_text(json.dumps(group_of(items)), encoding="utf-8")


def _rank(unit: tuple[str, dict[str, bool]]) -> tuple[int, int]:
    """Order of the units: those of the ``FIRST`` files in its order, then by size."""
    path = next(iter(unit[1])).split("::", 1)[0]
    first = FIRST.index(path) if path in FIRST else len(FIRST)
    return first, -len(unit[1])


class GroupScheduling(LoadScopeScheduling):
    """``--dist loadgroup``: the tests of one group form one unit of work (one worker), every
    other test is a unit of its own; units of the ``FIRST`` files are handed out first, then
    units with more tests."""

    def __init__(self, config: pytest.Config, directory: Path, log: Any = None) -> None:
        super().__init__(config, log)
        self._directory = directory
        self._groups: dict[str, str] | None = None

    def _split_scope(self, nodeid: str) -> str:
        if self._groups is None:  # every worker has finished collecting by now
            self._groups = {}
            for path in sorted(self._directory.glob("*.json")):
                self._groups.update(json.loads(path.read_text(encoding="utf-8")))
        group = self._groups.get(nodeid)
        return f"group:{group}" if group is not None else nodeid

    def schedule(self) -> None:
        """xdist's ``LoadScopeScheduling.schedule`` with the units in ``_rank`` order."""
        assert self.collection_is_completed
        if self.collection is not None:  # the initial distribution happened
            for node in self.nodes:
                self._reschedule(node)
            return
        if not self._check_nodes_have_same_collection():
            self.log("**Different tests collected, aborting run**")
            return
        self.collection = list(next(iter(self.registered_collections.values())))
        if not self.collection:
            return
        units: dict[str, dict[str, bool]] = {}
        for nodeid in self.collection:
            units.setdefault(self._split_scope(nodeid), {})[nodeid] = False
        for scope, unit in sorted(units.items(), key=_rank):
            self.workqueue[scope] = unit
        for _ in range(len(self.nodes) - len(self.workqueue)):  # more workers than work
            unused, _assigned = self.assigned_work.popitem()
            unused.shutdown()
        for node in self.nodes:
            self._assign_work_unit(node)
        for node in self.nodes:  # each worker starts with at least two units if possible
            self._reschedule(node)
        if not self.workqueue:
            for node in self.nodes:
                node.shutdown()
