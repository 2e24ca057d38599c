"""No traceback for any user input: every command that reads a file answers malformed, wrongly
typed, empty, huge-line and binary input with exit code 2 and one line on stderr."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from builder.cli import main

ROOT = Path(__file__).resolve().parents[1]

#: Contents for one input file: (name, bytes).
BAD_INPUTS: dict[str, bytes] = {
    "empty": b"",
    "binary": bytes(range(256)) * 8,
    "not-utf8": "caf\u00e9 na\u00efve\n".encode("latin-1"),
    "huge-line": b'{"text": "' + b"x" * 3_000_000 + b'"}\n',
    "wrong-type": b'{"text": 12, "id": [1, 2], "custom_id": {"a": 1}}\n',
    "json-array": b"[1, 2, 3]\n",
    "truncated-json": b'{"text": "abc", "id": \n',
    "nul": b"\x00\x00\x00\x00",
}


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def _taxonomy_dir(tmp: Path, content: bytes) -> Path:
    d = tmp / "taxonomy"
    d.mkdir()
    (d / "broken.yaml").write_bytes(content)
    return d


def _templates_dir(tmp: Path, content: bytes) -> Path:
    d = tmp / "templates"
    shutil.copytree(ROOT / "templates", d)
    (d / "section.j2").write_bytes(content)
    return d


def _config(tmp: Path, content: bytes) -> Path:
    p = tmp / "corpus.toml"
    p.write_bytes(content)
    return p


def _file(tmp: Path, content: bytes, name: str) -> Path:
    p = tmp / name
    p.write_bytes(content)
    return p


def _run_dir(tmp: Path, content: bytes) -> Path:
    run = tmp / "outputs" / "r"
    (run / "documents").mkdir(parents=True)
    (run / "documents" / "part-00000.parquet").write_bytes(content)
    (run / "manifest.json").write_bytes(content)
    return run


#: command name -> builds argv for a bad file in tmp.
COMMANDS: dict[str, Callable[[Path, bytes], list[str]]] = {
    "taxonomy validate": lambda t, c: [
        "taxonomy", "validate", "--taxonomy", str(_taxonomy_dir(t, c))],
    "taxonomy show": lambda t, c: ["taxonomy", "show", "--taxonomy", str(_taxonomy_dir(t, c))],
    "taxonomy stats": lambda t, c: ["taxonomy", "stats", "--taxonomy", str(_taxonomy_dir(t, c))],
    "taxonomy import csv": lambda t, c: [
        "taxonomy", "import", str(_file(t, c, "in.csv")), "--into", str(t / "out"),
        "--levels", "discipline,subject,topic"],
    "taxonomy import json": lambda t, c: [
        "taxonomy", "import", str(_file(t, c, "in.json")), "--into", str(t / "out"),
        "--levels", "discipline,subject,topic"],
    "walk": lambda t, c: ["walk", "--taxonomy", str(_taxonomy_dir(t, c)), "--limit", "3"],
    "templates check": lambda t, c: [
        "templates", "check", "--templates", str(_templates_dir(t, c))],
    "plan --config": lambda t, c: ["plan", "--config", str(_config(t, c))],
    "build --config": lambda t, c: ["build", "--config", str(_config(t, c)), "--no-progress"],
    "walk --config": lambda t, c: ["walk", "--config", str(_config(t, c))],
    "llm run": lambda t, c: [
        "llm", "run", str(_file(t, c, "req.jsonl")), "-o", str(t / "out.jsonl"),
        "--config", str(_config(t, b'[llm]\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "m"\n'))],
    "dedup jsonl": lambda t, c: ["dedup", str(_file(t, c, "in.jsonl")), "-o", str(t / "o")],
    "dedup parquet": lambda t, c: ["dedup", str(_file(t, c, "in.parquet")), "-o", str(t / "o")],
    "decontam input": lambda t, c: [
        "decontam", str(_file(t, c, "in.jsonl")), "--against",
        str(_file(t, b'{"text": "a benchmark item of some words"}\n', "b.jsonl")),
        "-o", str(t / "o")],
    "decontam benchmark": lambda t, c: [
        "decontam", str(_file(t, b'{"id": "a", "text": "some words here"}\n', "in.jsonl")),
        "--against", str(_file(t, c, "bench.jsonl")), "-o", str(t / "o")],
    "report": lambda t, c: ["report", str(_run_dir(t, c))],
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bad_input_is_one_line_and_exit_2(
    command: str, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = COMMANDS[command](tmp_path, BAD_INPUTS[kind])
    code, out, err = _run(argv)
    assert "Traceback" not in out + err
    if code == 0:
        # A few inputs are legitimately valid for some commands (an empty JSONL to dedup is
        # an empty corpus); then the command must say what it did, and not fail silently.
        assert (kind, command) in ACCEPTED, f"{command} accepted {kind} input: {out}{err}"
        return
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit {code}: {err}"
    # One line; validators that report every problem at once print one `file:line: ...` (or
    # `file: $.json.path: ...`) line per problem, and at most one summary line.
    if len(lines) > 1:
        other = [line for line in lines if not re.match(r"^\S+:(\d+: | \$)", line)]
        assert len(other) <= 1, err
    assert len(lines) <= 20 and len(err) < 4000, err[:4000]


#: (input kind, command) pairs where exit 0 is the right answer.
ACCEPTED: set[tuple[str, str]] = {
    ("empty", "dedup jsonl"),  # an empty corpus: nothing to do, said so
    ("empty", "decontam benchmark"),
    ("empty", "decontam input"),
    ("empty", "llm run"),  # no requests: "0 written"
    # One 3 MB document is a valid document.
    ("huge-line", "dedup jsonl"),
    ("huge-line", "decontam input"),
    ("huge-line", "decontam benchmark"),
    # A benchmark whose text field holds numbers (answers of math benchmarks) is compared as
    # text on purpose.
    ("wrong-type", "decontam benchmark"),
}


def test_inputs_are_really_bad_for_json_readers() -> None:
    for kind in ("binary", "truncated-json", "nul"):
        with pytest.raises(ValueError):
            json.loads(BAD_INPUTS[kind].decode("utf-8", "replace"))
