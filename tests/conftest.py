"""Shared fixtures: every test runs with cache and outputs under its own tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.support.fake_openai_server import fake_openai, fake_openai_factory  # noqa: F401  (shared fixtures)

ROOT = Path(__file__).resolve().parent.parent


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
