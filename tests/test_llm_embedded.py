"""The real embedded model (llama_cpp.server + SmolLM2), end to end. Short generations only."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.llm import open_engine
from builder.records import ChatRequest
from builder.settings.llm import LLMSettings

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python not installed"
    ),
]
ROOT = Path(__file__).resolve().parent.parent
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_embedded_server_end_to_end(tmp_path):
    settings = LLMSettings(max_tokens=24, temperature=0.0)
    requests = [
        ChatRequest(id="plain", messages=({"role": "user", "content": "Name three colors."},)),
        ChatRequest(
            id="json",
            messages=({"role": "user", "content": "A person as JSON with name and age."},),
            params={"max_tokens": 40},
            schema=SCHEMA,
        ),
    ]
    with open_engine(settings, progress=False) as engine:
        assert engine.embedded is not None and not engine.embedded.running  # started lazily
        results = {r.request_id: r for r in engine.run(requests)}
        pid = engine.embedded.proc.pid
        assert _alive(pid)
        log = engine.embedded.log_path
    assert _wait_gone(pid), "the embedded server outlived the engine"
    plain, structured = results["plain"], results["json"]
    assert plain.status in ("ok", "length") and plain.text
    assert plain.model == "SmolLM2-135M-Instruct.Q4_1" and plain.completion_tokens > 0
    # the server got json_object + schema (json_schema would be HTTP 500 there)
    assert structured.status in ("ok", "invalid", "length"), structured.error
    if structured.ok:
        assert set(structured.parsed) == {"name", "age"}
    assert log.exists()

    # a warm rerun: no server start at all
    with open_engine(settings, progress=False) as engine:
        again = {r.request_id: r for r in engine.run(requests)}
        assert engine.embedded.proc is None
    assert all(r.cached for r in again.values()) and again["plain"].text == plain.text

    # same seed and parameters, fresh cache: the same text
    with open_engine(settings, cache_dir=tmp_path / "other", progress=False) as engine:
        fresh = engine.complete(requests[0])
    assert fresh.text == plain.text and not fresh.cached


_HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from builder.llm import open_engine
from builder.settings.llm import LLMSettings
with open_engine(LLMSettings(), cache_dir={cache!r}, progress=False) as engine:
    engine._ensure_started()
    print(engine.embedded.proc.pid, flush=True)
    time.sleep(120)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_no_orphan_server_after_ctrl_c_sigterm_or_kill_9(tmp_path, sig):
    code = _HOLDER.format(root=str(ROOT), cache=str(tmp_path / "cache"))
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        assert line.strip().isdigit(), proc.stderr.read()
        server_pid = int(line)
        assert _alive(server_pid)
        os.kill(proc.pid, sig)
        proc.wait(timeout=20)
        assert _wait_gone(server_pid), f"server {server_pid} survived {sig.name}"
    finally:
        if proc.poll() is None:
            proc.kill()
