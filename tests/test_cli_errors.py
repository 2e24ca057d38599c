"""User errors at the edges of the CLI: exit codes, one-line messages, outputs written safely."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TAXONOMY = ROOT / "taxonomy"


def corpus(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "builder", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_version_works_without_an_installed_distribution(tmp_path: Path) -> None:
    result = corpus("--version", cwd=tmp_path)
    assert result.returncode == 0 and "0.1.0" in result.stdout


def test_export_writes_through_a_symlink_instead_of_replacing_it(tmp_path: Path) -> None:
    target = tmp_path / "real.json"
    target.write_text("old", encoding="utf-8")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    result = corpus(
        "taxonomy", "export", "--taxonomy", str(TAXONOMY), "--subtree", "calculus",
        "-o", str(link), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert link.is_symlink()
    assert json.loads(target.read_text(encoding="utf-8"))["nodes"]


def test_unwritable_output_is_one_line_and_exit_2(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    result = corpus(
        "taxonomy", "export", "--taxonomy", str(TAXONOMY), "-o", str(blocker / "sub.json"),
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and str(blocker) in result.stderr


def _closed_port_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "corpus.toml"
    cfg.write_text(
        "[llm]\n"
        'base_url = "http://127.0.0.1:9/v1"\n'
        'model = "m"\n'
        "max_attempts = 2\n"
        "[taxonomy]\n"
        f'dir = "{TAXONOMY}"\n'
        "[syllabus]\ngenerate_missing = false\n"
        "[walk]\nlimit = 2\n"
        'subtree = ["python-programming"]\n'
        "[generate]\n"
        f'templates_dir = "{ROOT / "templates"}"\n',
        encoding="utf-8",
    )
    return cfg


def test_build_against_a_closed_port_fails_fast_and_clearly(tmp_path: Path) -> None:
    cfg = _closed_port_config(tmp_path)
    result = corpus("build", "--config", str(cfg), "--no-progress", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "all 2 generation request(s) failed" in result.stderr
    assert "cannot connect to http://127.0.0.1:9/v1" in result.stderr
    assert not (tmp_path / "outputs" / "demo" / "manifest.json").exists()


def test_llm_run_exits_1_when_requests_failed(tmp_path: Path) -> None:
    cfg = _closed_port_config(tmp_path)
    requests = tmp_path / "requests.jsonl"
    requests.write_text(
        json.dumps(
            {
                "custom_id": "a",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            }
        )
        + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "out.jsonl"
    result = corpus(
        "llm", "run", str(requests), "-o", str(out), "--config", str(cfg), "--quiet",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    line = json.loads(out.read_text(encoding="utf-8"))
    assert line["custom_id"] == "a" and line["error"]
