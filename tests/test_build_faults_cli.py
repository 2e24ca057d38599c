"""``corpus build`` through transient faults and through the Batch API (issue 16).

Each build runs in-process through ``builder.cli.main`` against the loopback fake server, and
its corpus is compared with a fault-free online build of the same config: the same ids and the
same texts, each request answered once.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from builder.cli import main
from tests.support.fake_openai_server import FakeOpenAIServer, Fault
from tests.support.project import ids_and_texts, make_project, responder

SMALL: dict[str, dict[str, Any]] = {
    "walk": {"subtree": ["arithmetic"], "limit": 2},
    "generate": {"documents_per_unit": 3, "evolve": False},  # 6 generation requests
}
# Fast retries: Retry-After and backoff of a few milliseconds, enough attempts for one fault.
FAST: dict[str, Any] = {"max_attempts": 4, "backoff_base_s": 0.001, "backoff_max_s": 0.01}


def build(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, config: Path
) -> Path:
    """``corpus build --json`` with an LLM cache and outputs of the project's own (so no
    build answers from another's cache or finds another's run up to date); returns the run
    directory (fails the test on a non-zero exit)."""
    monkeypatch.setenv("CORPUS_CACHE_DIR", str(config.parent / "cache"))
    monkeypatch.setenv("CORPUS_OUTPUT_DIR", str(config.parent / "outputs"))
    try:
        main(["build", "--config", str(config), "--json"])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    assert code == 0, err
    return Path(json.loads(out)["run_dir"])


def request_key(body: dict[str, Any]) -> str:
    """What makes a request unique (its messages and seed), as the responder sees it."""
    key = json.dumps(body.get("messages"), sort_keys=True) + str(body.get("seed"))
    return hashlib.sha256(key.encode()).hexdigest()


def is_generation(body: dict[str, Any]) -> bool:
    """A document-generation request: not a syllabus (``sessions`` schema), not a solver."""
    rf = body.get("response_format") or {}
    schema = (rf.get("json_schema") or {}).get("schema") or rf.get("schema") or {}
    if "sessions" in schema.get("properties", {}):
        return False
    system = next(
        (m.get("content") or "" for m in body.get("messages", []) if m.get("role") == "system"), ""
    )
    return not system.startswith("You are a careful problem solver")


class FirstTryFaults:
    """Fails the first attempt of every other generation request (429 with Retry-After, 500,
    connection reset in turn) and records which requests it failed; retries go through."""

    KINDS = (Fault("429", retry_after=0.005), Fault("500"), Fault("reset"))

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.failed: dict[str, str] = {}  # request key -> fault kind

    def __call__(self, index: int, body: dict[str, Any]) -> Fault | None:
        if not is_generation(body):
            return None
        key = request_key(body)
        first = key not in self.seen
        self.seen.add(key)
        if not first or len(self.seen) % 2:
            return None
        fault = self.KINDS[len(self.failed) % len(self.KINDS)]
        self.failed[key] = fault.kind
        return fault


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """A fault-free online build, shared by the module's tests (each compares its own build
    with it and leaves it untouched); returns its run dir and the chat requests it sent."""
    root = tmp_path_factory.mktemp("clean")
    with FakeOpenAIServer(responder=responder) as srv, pytest.MonkeyPatch.context() as mp:
        config = make_project(root / "clean", srv.base_url, {**SMALL, "llm": FAST})
        mp.setenv("CORPUS_CACHE_DIR", str(config.parent / "cache"))
        mp.setenv("CORPUS_OUTPUT_DIR", str(config.parent / "outputs"))
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(["build", "--config", str(config), "--json"])  # SystemExit fails the setup
        return Path(json.loads(out.getvalue())["run_dir"]), list(srv.requests)


def test_build_through_transient_faults_equals_a_fault_free_build(
    clean: tuple[Path, list[dict[str, Any]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clean_dir, clean_requests = clean
    clean_keys = [request_key(b) for b in clean_requests]
    faults = FirstTryFaults()
    with FakeOpenAIServer(responder=responder, faults=faults) as srv:
        config = make_project(tmp_path / "faulty", srv.base_url, {**SMALL, "llm": FAST})
        run_dir = build(capsys, monkeypatch, config)
        keys = [request_key(b) for b in srv.requests]
        injected_429 = srv.count("429")

    assert set(faults.failed.values()) == {"429", "500", "reset"}  # every kind was injected
    assert injected_429 == list(faults.failed.values()).count("429")
    # each failed request was sent once more, and nothing else was sent twice
    assert sorted(keys) == sorted(clean_keys + list(faults.failed))
    for key in faults.failed:
        assert keys.count(key) == clean_keys.count(key) + 1
    docs = ids_and_texts(run_dir)
    assert docs and docs == ids_and_texts(clean_dir)
    assert len({doc_id for doc_id, _ in docs}) == len(docs)
    assert len({text for _, text in docs}) == len(docs)


def batch_lines(srv: FakeOpenAIServer) -> list[dict[str, Any]]:
    """The request bodies of every batch input file uploaded to the server."""
    bodies = []
    for raw in srv.files.values():
        for line in raw.decode("utf-8").splitlines():
            item = json.loads(line) if line.strip() else None
            if isinstance(item, dict) and "body" in item:
                bodies.append(item["body"])
    return bodies


def test_build_with_batch_true_goes_through_the_batch_api_and_equals_an_online_build(
    clean: tuple[Path, list[dict[str, Any]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    online_dir, online_requests = clean
    llm = {**FAST, "batch": True, "batch_poll_s": 0.01}
    with FakeOpenAIServer(responder=responder) as srv:
        config = make_project(tmp_path / "batch", srv.base_url, {**SMALL, "llm": llm})
        run_dir = build(capsys, monkeypatch, config)
        chat_generation = [b for b in srv.requests if is_generation(b)]
        batched = [b for b in batch_lines(srv) if is_generation(b)]
        batches = srv.count("batches")

    assert batches >= 1 and batched  # generation went through the Batch API ...
    assert chat_generation == []  # ... and none of it as a chat completion
    # the same generation requests as online, each batched once
    batched_keys = sorted(request_key(b) for b in batched)
    assert batched_keys == sorted(request_key(b) for b in online_requests if is_generation(b))
    docs = ids_and_texts(run_dir)
    assert docs and docs == ids_and_texts(online_dir)
