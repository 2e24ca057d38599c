"""The README's examples run as written (docs that cannot rot).

Its Python snippets are executed; its curator command lines (`corpus taxonomy ...`,
`corpus syllabus list|show`, `corpus walk`...) run in order against a copy of the shipped
taxonomy. Lines that need a model, or that stand for a family of commands (`a|b`, `[--flag]`,
`...`), are not run here: their commands are covered by their own tests.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest

from builder.cli import main
from tests.support.fake_openai_server import FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")

#: Subcommands that read or edit local files only (no model, no network).
OFFLINE = (
    "taxonomy validate", "taxonomy show", "taxonomy stats", "taxonomy add", "taxonomy move",
    "taxonomy rename", "taxonomy remove", "taxonomy export", "taxonomy review",
    "syllabus list", "syllabus show", "walk", "templates check",
)  # fmt: skip


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _offline_lines() -> list[str]:
    lines = []
    for block in _blocks("sh"):
        for raw in block.splitlines():
            line = raw.split("  #", 1)[0].strip()
            if not line.startswith("corpus ") or re.search(r"[|\[\]$]|\.\.\.", line):
                continue
            if not any(line.startswith(f"corpus {cmd}") for cmd in OFFLINE):
                break  # the rest of this block builds on what a model wrote
            lines.append(line)
    return lines


def _run(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue() + err.getvalue()


def test_the_readme_has_runnable_examples() -> None:
    assert len(_blocks("python")) >= 2
    assert len(_offline_lines()) >= 6


def test_curator_command_lines_run_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(ROOT / "taxonomy", tmp_path / "taxonomy")
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    monkeypatch.chdir(tmp_path)
    for line in _offline_lines():
        code, output = _run(shlex.split(line)[1:])
        assert code == 0, f"README line failed: {line}\n{output}"


def test_walker_snippet(monkeypatch: pytest.MonkeyPatch) -> None:
    (snippet,) = [b for b in _blocks("python") if "walk_topics" in b]
    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(snippet, "README.md", "exec"), {})
    printed = out.getvalue().splitlines()
    limit = int(re.search(r"limit=(\d+)", snippet).group(1))  # type: ignore[union-attr]
    assert len(printed) == limit
    assert all(line.split()[0] for line in printed)


def test_corpus_reading_snippet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.project import make_project, responder

    (snippet,) = [b for b in _blocks("python") if "read_parquet" in b]
    run = re.search(r"outputs/(\w+)/", snippet).group(1)  # type: ignore[union-attr]
    with FakeOpenAIServer(responder=responder) as srv:
        config = make_project(
            tmp_path,
            srv.base_url,
            {"walk": {"subtree": ["arithmetic"], "limit": 2}, "generate": {"evolve": False}},
            run=run,
        )
        monkeypatch.delenv("CORPUS_OUTPUT_DIR")
        monkeypatch.chdir(tmp_path)
        code, output = _run(["build", "--config", str(config), "--no-progress"])
        assert code == 0, output
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    scope: dict[str, object] = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    rows = len(scope["df"])  # type: ignore[arg-type]
    assert rows > 0
    assert scope["ds"]["train"].num_rows == rows  # type: ignore[index]
    assert os.path.isdir(tmp_path / "outputs" / run / "documents")
