"""The real embedded model (llama_cpp.server + SmolLM2), end to end. Short generations only.

These tests assert the mechanics (the request is sent, the reply parsed or the failure recorded
with its reason, the server started and stopped, nothing left behind), never what the tiny
model writes: its output changes with the CPU. llama-cpp-python is a locked dependency, so a
missing one fails here rather than skipping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from builder.llm import open_engine
from builder.records import ChatRequest
from builder.settings.llm import LLMSettings
from tests.support.processes import alive, children, wait_until

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


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
        assert alive(pid)
        log = engine.embedded.log_path
        sent = engine.stats.http_requests
    assert wait_until(lambda: not alive(pid), 60.0), "the embedded server outlived the engine"
    assert set(results) == {"plain", "json"}
    assert sent >= 2  # both requests reached the server (a repair retry may add one)
    plain, structured = results["plain"], results["json"]
    # a reply was parsed, or the failure was recorded with its reason
    assert plain.status in ("ok", "length"), plain.error
    assert plain.model == "SmolLM2-135M-Instruct.Q4_1" and plain.completion_tokens > 0
    assert plain.finish_reason in ("stop", "length") and not plain.cached
    # the server got json_object + schema (json_schema would be HTTP 500 there)
    assert structured.status in ("ok", "invalid", "length"), structured.error
    if structured.ok:
        assert set(structured.parsed) == {"name", "age"}
    else:
        assert structured.error  # the reason is recorded
    assert log.exists()

    # a warm rerun: no server start at all, the same results from the cache
    with open_engine(settings, progress=False) as engine:
        again = {r.request_id: r for r in engine.run(requests)}
        assert engine.embedded.proc is None and engine.stats.http_requests == 0
    assert set(again) == {"plain", "json"} and all(r.cached for r in again.values())
    assert again["plain"].text == plain.text  # what was stored is what comes back


_HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from builder.llm import open_engine
from builder.settings.llm import LLMSettings
with open_engine(LLMSettings(), cache_dir={cache!r}, progress=False) as engine:
    engine.ensure_started()
    print(engine.embedded.proc.pid, flush=True)
    sys.stdin.read()  # hold the engine open until the test kills this process
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_no_orphan_server_after_ctrl_c_sigterm_or_kill_9(tmp_path, sig):
    code = _HOLDER.format(root=str(ROOT), cache=str(tmp_path / "cache"))
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip().isdigit(), proc.stderr.read()
        server_pid = int(line)
        assert alive(server_pid)
        os.kill(proc.pid, sig)
        proc.wait(timeout=20)
        # kill -9 gives the builder no chance to clean up: the watchdog pipe does it
        assert wait_until(lambda: not alive(server_pid), 60.0), (
            f"server {server_pid} survived {sig.name}"
        )
        # It ended itself at once (the watchdog's os._exit), not through uvicorn's graceful
        # shutdown, which logs this line and took 10-19 s.
        log = (tmp_path / "cache" / "embedded-server.log").read_text(errors="replace")
        assert "Shutting down" not in log, log
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_corpus_llm_run_on_the_embedded_model_stops_promptly_on_a_signal(tmp_path, sig, code):
    """Ctrl-C and SIGTERM while a request is at the embedded server: the conventional exit
    code (130, 143), and the server already gone when the builder exits (it used to wait
    10-11 s for the server's graceful shutdown; now closing the watchdog pipe ends it)."""
    req = tmp_path / "req.jsonl"
    with open(req, "w") as f:
        for i, max_tokens in enumerate((4, 400, 400)):  # c0 answers soon, c1 is then in flight
            body = {"messages": [{"role": "user", "content": f"Count to {100 + i}."}]}
            f.write(json.dumps({"custom_id": f"c{i}", "body": {**body, "max_tokens": max_tokens}}))
            f.write("\n")
    (tmp_path / "corpus.toml").write_text("[llm]\nmax_tokens = 400\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CORPUS_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "builder", "llm", "run", "req.jsonl", "-o", "out.jsonl", "--quiet"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # the deterministic point: the model server is up and has answered c0 (its access
        # log says so), so c1 is being generated
        log = tmp_path / "cache" / "embedded-server.log"
        servers: list[int] = []

        def serving() -> bool:
            servers[:] = children(proc.pid)
            return bool(servers) and log.exists() and "POST" in log.read_text(errors="replace")

        assert wait_until(serving, 120), proc.stderr.read() if proc.poll() is not None else ""
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err
        assert "Traceback" not in err and ("interrupt" in err.lower() or "SIGTERM" in err)
        assert servers and not any(alive(p) for p in servers)  # stopped before the exit
        assert "Shutting down" not in log.read_text(errors="replace"), "not the graceful path"
        out = tmp_path / "out.jsonl"
        done = [json.loads(x)["custom_id"] for x in out.read_text().splitlines()]
        assert len(done) < 3  # stopped mid-run; what was written is whole lines
    finally:
        if proc.poll() is None:
            proc.kill()
