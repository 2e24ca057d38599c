"""``corpus llm run`` and ``corpus llm check`` through the CLI, including kill -9 and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.cli import cli
from builder.llm.cache import Cache
from tests.support.fake_openai_server import FakeOpenAIServer

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "integer"}},
    "required": ["a"],
    "additionalProperties": False,
}


def write_config(path: Path, srv: FakeOpenAIServer, extra: str = "") -> Path:
    path.write_text(
        f'[llm]\nbase_url = "{srv.base_url}"\nmodel = "fake-model"\nmax_concurrency = 4\n'
        f"backoff_base_s = 0.01\nbackoff_max_s = 0.05\nmax_attempts = 3\n{extra}"
    )
    return path


def write_requests(path: Path, n: int, *, schema_every: int = 0) -> list[str]:
    ids = []
    with open(path, "w") as f:
        for i in range(n):
            body = {
                "model": "ignored",
                "messages": [{"role": "user", "content": f"q{i}"}],
                "max_tokens": 20,
            }
            if schema_every and i % schema_every == 0:
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "a", "schema": SCHEMA, "strict": True},
                }
            line = {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions"}
            f.write(json.dumps({**line, "body": body}) + "\n")
            ids.append(f"c{i}")
    return ids


def read_output(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def corpus(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def corpus_main(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "builder", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_llm_run_writes_batch_output_once_per_custom_id(tmp_path):
    with FakeOpenAIServer() as srv:
        cfg = write_config(tmp_path / "corpus.toml", srv)
        ids = write_requests(tmp_path / "req.jsonl", 12, schema_every=4)
        out = tmp_path / "out.jsonl"
        result = corpus_main(
            "llm", "run", "req.jsonl", "-o", "out.jsonl", "--config", str(cfg), cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr
        lines = read_output(out)
        assert sorted(x["custom_id"] for x in lines) == sorted(ids)
        for x in lines:
            assert x["error"] is None
            assert x["response"]["status_code"] == 200
            body = x["response"]["body"]
            assert body["object"] == "chat.completion" and body["choices"][0]["message"]
        c0 = next(x for x in lines if x["custom_id"] == "c0")
        assert json.loads(c0["response"]["body"]["choices"][0]["message"]["content"]) == {"a": 1}
        assert srv.requests[0]["model"] == "fake-model"  # the configured model, not body.model
        sent = srv.count()
        assert sent == 12
        again = corpus_main(
            "llm", "run", "req.jsonl", "-o", "out.jsonl", "--config", str(cfg), cwd=tmp_path
        )
        assert again.returncode == 0 and "12 already in" in again.stderr
        assert srv.count() == sent and len(read_output(out)) == 12


def test_llm_run_survives_kill_9_and_completes_on_rerun(tmp_path):
    # The first 20 requests are answered; every later one hangs at the server, so the run is
    # killed at a known point: 20 answered, 4 (max_concurrency) in flight, nothing else sent.
    with FakeOpenAIServer(faults=lambda i, body: "hang" if i >= 20 else None) as srv:
        cfg = write_config(tmp_path / "corpus.toml", srv)
        ids = write_requests(tmp_path / "req.jsonl", 60)
        out = tmp_path / "out.jsonl"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        args = [sys.executable, "-m", "builder", "llm", "run", "req.jsonl", "-o", "out.jsonl"]
        proc = subprocess.Popen(
            [*args, "--config", str(cfg), "--quiet"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        cache = Cache(tmp_path / "cache")  # the conftest points CORPUS_CACHE_DIR here
        deadline = time.monotonic() + 60
        while (srv.count() < 24 or cache.count() < 20) and time.monotonic() < deadline:
            time.sleep(0.02)  # poll for the known point (bounded), not a timed kill
        assert srv.count() == 24 and cache.count() == 20
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert srv.count() == 24  # killed mid-run: 36 requests were never sent
        # simulate the worst moment: a half-written last line
        with open(out, "a") as f:
            f.write('{"id": "batch_req_x", "custom_id": "c5')
        srv.faults = None
        result = corpus_main(
            "llm", "run", "req.jsonl", "-o", "out.jsonl", "--config", str(cfg), cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr
        lines = read_output(out)
        got = [x["custom_id"] for x in lines]
        assert sorted(got) == sorted(ids)  # each custom_id exactly once, none lost
        assert all(x["error"] is None for x in lines)
        # finished work was reused: only the 40 not answered before the kill were sent again
        assert srv.count() == 24 + 40
        cache.close()


def test_failed_requests_are_written_and_retried_on_request(tmp_path):
    with FakeOpenAIServer() as srv:
        srv.faults = lambda i, body: "500" if body["messages"][0]["content"] == "q1" else None
        cfg = write_config(tmp_path / "corpus.toml", srv)
        write_requests(tmp_path / "req.jsonl", 3)
        out = tmp_path / "out.jsonl"
        base = ["llm", "run", str(tmp_path / "req.jsonl"), "-o", str(out), "--config", str(cfg)]
        result = corpus(*base)
        assert result.exit_code == 1
        by_id = {x["custom_id"]: x for x in read_output(out)}
        assert by_id["c1"]["response"] is None
        assert by_id["c1"]["error"]["code"] == "request_failed"
        assert "500" in by_id["c1"]["error"]["message"]
        srv.faults = None
        assert corpus(*base).exit_code == 0  # plain rerun: each custom_id once, c1 stays
        assert len(read_output(out)) == 3
        result = corpus(*base, "--retry-failed")
        assert result.exit_code == 0
        by_id = {x["custom_id"]: x for x in read_output(out)}
        assert len(by_id) == 3 == len(read_output(out))
        assert by_id["c1"]["error"] is None and by_id["c1"]["response"]["status_code"] == 200


def test_bad_request_lines_are_reported_with_file_and_line(tmp_path):
    with FakeOpenAIServer() as srv:
        cfg = write_config(tmp_path / "corpus.toml", srv)
        req = tmp_path / "req.jsonl"
        write_requests(req, 2)
        with open(req, "a") as f:
            f.write(
                '{"custom_id": "c0", "body": {"messages": [{"role": "user", "content": "x"}]}}\n'
            )
            f.write("not json\n")
        result = corpus_main(
            "llm",
            "run",
            str(req),
            "-o",
            str(tmp_path / "o.jsonl"),
            "--config",
            str(cfg),
            cwd=tmp_path,
        )
        assert result.returncode == 2
        assert f"{req}:3: custom_id 'c0' repeats line 1" in result.stderr
        assert f"{req}:4: not valid JSON" in result.stderr
        assert "Traceback" not in result.stderr and srv.count() == 0


def test_llm_run_budget_exits_3_and_resumes(tmp_path):
    with FakeOpenAIServer() as srv:
        cfg = write_config(
            tmp_path / "corpus.toml",
            srv,
            '\n[llm.prices."fake-model"]\ninput = 1000.0\noutput = 1000.0\n',
        )
        write_requests(tmp_path / "req.jsonl", 10)
        base = ["llm", "run", "req.jsonl", "-o", "out.jsonl", "--config", str(cfg)]
        result = corpus_main(*base, "--max-cost", "0.05", cwd=tmp_path)
        assert result.returncode == 3, result.stderr
        assert "budget reached" in result.stderr and "higher --max-cost" in result.stderr
        first = read_output(tmp_path / "out.jsonl")
        assert 0 < len(first) < 10
        result = corpus_main(*base, "--max-cost", "100", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert len(read_output(tmp_path / "out.jsonl")) == 10 and srv.count() == 10


def test_llm_check_reports_each_endpoint(tmp_path):
    with FakeOpenAIServer() as srv:
        cfg = tmp_path / "corpus.toml"
        cfg.write_text(
            "[[llm.endpoints]]\n"
            f'base_url = "{srv.base_url}"\nmodel = "fake-model"\n'
            "[[llm.endpoints]]\n"
            'base_url = "http://127.0.0.1:9/v1"\nmodel = "other"\n'
            "[llm]\nconnect_timeout_s = 1\n"
        )
        result = corpus_main("llm", "check", "--config", str(cfg), "--chat", cwd=tmp_path)
        assert result.returncode == 2
        lines = result.stdout.splitlines()
        assert lines[0].startswith(f"ok    {srv.base_url}") and "fake-model" in lines[0]
        assert "chat:" in lines[0]
        assert lines[1].startswith("FAIL  http://127.0.0.1:9/v1") and "cannot connect" in lines[1]
        assert "1 of 2 endpoint(s) did not answer" in result.stderr
        assert srv.count("chat") == 1 and srv.count("models") == 1


def test_llm_check_json(tmp_path):
    with FakeOpenAIServer() as srv:
        cfg = write_config(tmp_path / "corpus.toml", srv)
        result = corpus("llm", "check", "--config", str(cfg), "--json")
        assert result.exit_code == 0
        status = json.loads(result.output.splitlines()[0])
        assert status["ok"] and status["models"] == ["fake-model"] and status["model_listed"]


@pytest.mark.parametrize("command", [["llm"], ["llm", "run"], ["llm", "check"]])
def test_llm_commands_have_help_with_an_example(command):
    result = corpus(*command, "--help")
    assert result.exit_code == 0 and "Example:" in result.output
