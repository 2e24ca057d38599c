"""Shared pieces of the review app tests (no tests here): a built run to review.

``built_project`` builds the pipeline tests' project (``tests.support.project``) once
per module through ``corpus build`` against the loopback fake OpenAI server, after adding a
proposed node (with a curator's comment) to the taxonomy. The build also writes a proposed
syllabus for ``programming``. Each test takes a private copy (``ReviewProject.copy``) so
that writes never leak between tests.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from starlette.testclient import TestClient

from builder.cli import main
from builder.config import load_config
from builder.review.app import ReviewSettings, create_app
from tests.support.fake_openai_server import FakeOpenAIServer
from tests.support.project import make_project, responder

ROOT = Path(__file__).resolve().parents[2]  # the repository (tests/support/ -> root)
PROPOSED_COMMENT = "# proposed by fake-model on 2026-12-01"
PROPOSED_NODE = f"""\
      - id: graphs
        name: Graph algorithms
        description: Paths and trees.
        level: topic
        status: proposed  {PROPOSED_COMMENT}
"""
SETTINGS = {
    "walk": {"subtree": ["computing"], "limit": 8},
    "generate": {"documents_per_unit": 2, "evolve": False},
}


@dataclass
class ReviewProject:
    """Paths of a built project."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "corpus.toml"

    @property
    def taxonomy(self) -> Path:
        return self.root / "taxonomy"

    @property
    def computing_yaml(self) -> Path:
        return self.taxonomy / "computing.yaml"

    @property
    def syllabus(self) -> Path:
        return self.taxonomy / "computing" / "syllabi" / "programming.yaml"

    @property
    def run_dir(self) -> Path:
        return self.root / "outputs" / "test"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def copy(self, dest: Path) -> ReviewProject:
        shutil.copytree(self.root, dest)
        return ReviewProject(dest)

    def corpus(self) -> pl.DataFrame:
        return pl.read_parquet(sorted((self.run_dir / "documents").glob("part-*.parquet")))

    def rejected(self) -> pl.DataFrame:
        return pl.read_parquet(self.run_dir / "rejected.parquet")

    def build(self, base_url: str) -> None:
        """``corpus build`` of this project against the server at ``base_url``."""
        text = self.config.read_text(encoding="utf-8")
        lines = [
            f"base_url = {base_url!r}".replace("'", '"') if ln.startswith("base_url =") else ln
            for ln in text.splitlines()
        ]
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        run_build(self)


def run_build(project: ReviewProject) -> None:
    argv = ["build", "--config", str(project.config), "--no-progress"]
    argv += ["--cache-dir", str(project.cache)]
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("CORPUS_OUTPUT_DIR", raising=False)
        mp.delenv("CORPUS_CACHE_DIR", raising=False)
        try:
            main(argv)
        except SystemExit as exc:
            if exc.code:
                raise AssertionError(f"corpus build exited with {exc.code}") from None


def make_built_project(root: Path) -> ReviewProject:
    """Build the review test project under ``root`` (see the module docstring)."""
    with FakeOpenAIServer(responder=responder) as server:
        make_project(root, server.base_url, SETTINGS)
        project = ReviewProject(root)
        text = project.computing_yaml.read_text(encoding="utf-8")
        anchor = "      - id: recursion\n"
        if anchor not in text:
            raise AssertionError("the test taxonomy changed: no recursion node")
        project.computing_yaml.write_text(
            text.replace(anchor, PROPOSED_NODE + anchor), encoding="utf-8"
        )
        run_build(project)
    if not project.syllabus.exists():
        raise AssertionError("the build wrote no proposed syllabus for programming")
    return project


def add_proposed_nodes(project: ReviewProject, ids: list[str]) -> None:
    """Add more proposed topics under ``algorithms`` (after ``graphs``), each with the
    curator's comment, so that tests can decide on several nodes at once."""
    text = project.computing_yaml.read_text(encoding="utf-8")
    if PROPOSED_NODE not in text:
        raise AssertionError("the review project has no proposed graphs node")
    extra = "".join(
        PROPOSED_NODE.replace("id: graphs", f"id: {i}").replace("Graph algorithms", i.title())
        for i in ids
    )
    project.computing_yaml.write_text(
        text.replace(PROPOSED_NODE, PROPOSED_NODE + extra), encoding="utf-8"
    )


_BUILT: dict[str, ReviewProject] = {}
GROUP = pytest.mark.xdist_group("review")
"""Every review test module carries this mark: under ``--dist loadgroup`` they run on one
worker, which builds the review project once for all of them."""


@pytest.fixture(scope="module", name="built_project")
def built_project_fixture(tmp_path_factory: pytest.TempPathFactory) -> ReviewProject:
    """The built review project, made once per test process and shared by the review test
    modules: tests never touch it, they work on a private copy (``project``)."""
    if "project" not in _BUILT:
        _BUILT["project"] = make_built_project(tmp_path_factory.mktemp("review") / "project")
    return _BUILT["project"]


@pytest.fixture(name="project")
def project_fixture(built_project: ReviewProject, tmp_path: Path) -> ReviewProject:
    """A private copy of the built project for one test."""
    return built_project.copy(tmp_path / "project")


@dataclass
class ReviewServer:
    """A ``corpus review`` process and the URL it printed."""

    process: subprocess.Popen[str]
    url: str


def start_review(project: ReviewProject, *extra: str) -> ReviewServer:
    """Start ``python -m builder review --port 0 ...`` on ``project``; returns once it has
    printed its URL (it prints after the socket listens, so the URL answers at once)."""
    argv = [sys.executable, "-m", "builder", "review", "--config", str(project.config)]
    argv += ["--run", str(project.run_dir), "--cache-dir", str(project.cache), "--port", "0"]
    proc = subprocess.Popen(
        [*argv, *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if "http://" not in line:
        proc.kill()
        _, err = proc.communicate(timeout=30)
        raise AssertionError(f"corpus review did not start: {line!r} {err}")
    return ReviewServer(proc, line[line.index("http://") :].strip())


def stop_review(server: ReviewServer) -> None:
    server.process.terminate()
    try:
        server.process.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # pragma: no cover - uvicorn ignores SIGTERM
        server.process.kill()
        server.process.communicate()


def _env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("CORPUS_OUTPUT_DIR",)}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(name="review_server")
def review_server_fixture(project: ReviewProject) -> Iterator[ReviewServer]:
    server = start_review(project)
    yield server
    stop_review(server)


# -- request-level clients (Starlette's TestClient) -------------------------------------------

BASE = "http://127.0.0.1"


def make_client(project: ReviewProject, **overrides: Any) -> TestClient:
    """A TestClient of the review app over ``project`` (``overrides``: ReviewSettings fields)."""
    values: dict[str, Any] = {
        "run_dir": project.run_dir,
        "taxonomy_dir": project.taxonomy,
        "cache_dir": project.cache,
        "config": load_config(str(project.config)),
        **overrides,
    }
    settings = ReviewSettings(**values)
    return TestClient(create_app(settings), base_url=BASE)


@pytest.fixture(name="client")
def client_fixture(project: ReviewProject) -> TestClient:
    return make_client(project)


def csrf(client: TestClient) -> str:
    """The CSRF token the app's pages embed (as a browser would read it)."""
    page = client.get("/taxonomy").text
    match = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert match, "pages carry the CSRF token"
    return match.group(1)


def post(client: TestClient, url: str, data: dict[str, Any]) -> Any:
    """POST ``data`` as a form with the page's CSRF token."""
    return client.post(url, data={"csrf_token": csrf(client), **data})
