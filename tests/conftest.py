"""Shared fixtures and the suite's strict mode.

Every test runs with cache and outputs under its own tmp_path. The suite is strict: before
any test runs, the prerequisites the locked install provides (the embedded model runtime,
Chromium, a usable network namespace, the fast YAML parsers...) are checked and a missing one
stops the run with the fix; a test that skips anyway is reported as a failure; and no test can
open a connection outside the loopback range.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.support.fake_openai_server import fake_openai, fake_openai_factory  # noqa: F401
from tests.support.netguard import install_network_guard
from tests.support.prerequisites import missing_prerequisites
from tests.support.xdist_groups import WORKERINPUT_KEY, GroupScheduling, write_groups

ROOT = Path(__file__).resolve().parent.parent
_GROUPS_DIR = pytest.StashKey[Path]()


# Property tests explore the same examples on every machine and run: a new counterexample is
# found by a developer (HYPOTHESIS_PROFILE=explore), never by chance in CI. No deadline: an
# example that a busy CPU (the other xdist worker, a collection) stalls is not a failure.
settings.register_profile(
    "repeatable",
    derandomize=True,
    database=None,
    print_blob=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("explore", derandomize=False, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Libraries that fetch models or datasets from a hub must find them locally or fail.
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    install_network_guard()


def pytest_sessionstart(session: pytest.Session) -> None:
    # Under pytest-xdist the controller checks once, before any worker runs a test.
    if session.config.option.collectonly or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    problems = missing_prerequisites()
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise pytest.UsageError(
            "the test suite needs the full locked install and runs nothing without it "
            f"(strict mode; `make test` installs everything):\n{lines}"
        )


def _groups_dir(config: pytest.Config) -> Path:
    """Where the workers leave their test groups for the controller (made once per run)."""
    if _GROUPS_DIR not in config.stash:
        path = Path(tempfile.mkdtemp(prefix="pytest-xdist-groups-"))
        config.stash[_GROUPS_DIR] = path
        config.add_cleanup(lambda: shutil.rmtree(path, ignore_errors=True))
    return config.stash[_GROUPS_DIR]


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """(xdist controller) Tell each worker where to write its test groups."""
    node.workerinput[WORKERINPUT_KEY] = str(_groups_dir(node.config))


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # before xdist's own loadgroup scheduler
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under `make test` (xdist, `--dist loadgroup`) the tests of a module that share a
    module- or class-scoped fixture (a built project, a cluster, a server) run on one worker,
    so the fixture is made once; the other tests are spread one by one
    (tests/support/xdist_groups.py says why this is not xdist's own loadgroup)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    return GroupScheduling(config, _groups_dir(config), log)


@pytest.hookimpl(trylast=True)  # the node ids as the controller will receive them
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and WORKERINPUT_KEY in workerinput:
        write_groups(items, Path(workerinput[WORKERINPUT_KEY]), workerinput["workerid"])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """A skip is a failure: under `make test` a missing dependency must not hide a test."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under the strict suite (a skip hides a test): {reason}"


@pytest.fixture(autouse=True)
def _isolate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORPUS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CORPUS_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.delenv("CORPUS_DEBUG", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    for var in ("CORPUS_BASE_URL", "CORPUS_MODEL", "CORPUS_TAXONOMY_DIR"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def project_root() -> Path:
    return ROOT
