"""Bad `corpus dedup` / `corpus decontam` flags: one line per bad option, naming the flag,
its value and the allowed range; exit code 2; never a pydantic dump or a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from builder.cli import main
from builder.settings.dedup import DedupSettings

ROOT = Path(__file__).resolve().parents[1]


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err and "pydantic" not in err and "validation error" not in err
    return int(info.value.code), [ln for ln in err.splitlines() if ln.strip()]


@pytest.fixture
def inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no corpus.toml: the defaults apply
    (tmp_path / "in.jsonl").write_text('{"id": "a", "text": "one two three four five"}\n')
    (tmp_path / "bench.txt").write_text("an item\n")
    return tmp_path


def test_threshold_out_of_range_names_flag_value_and_bound(inputs, capsys) -> None:
    code, lines = _run(capsys, "dedup", "in.jsonl", "-o", "out", "--threshold", "2")
    assert code == 2
    assert lines == ["error: --threshold 2: must be <= 1"]
    assert not (inputs / "out").exists()


def test_bands_times_rows_over_num_perm_suggests_values(inputs, capsys) -> None:
    code, lines = _run(capsys, "dedup", "--explain", "--bands", "20", "--rows", "10")
    assert code == 2
    assert len(lines) == 1
    assert "--bands 20 --rows 10" in lines[0]
    assert "must not exceed num_perm (128)" in lines[0]
    # every suggestion really is a valid setting
    for option in ("--rows 6", "--bands 12", "--num-perm 200"):
        assert option in lines[0]
    DedupSettings(bands=20, rows=6)
    DedupSettings(bands=12, rows=10)
    DedupSettings(bands=20, rows=10, num_perm=200)


def test_each_bad_flag_gets_its_own_line(inputs, capsys) -> None:
    code, lines = _run(
        capsys, "dedup", "in.jsonl", "-o", "out", "--num-perm", "2000", "--shingle-size", "0"
    )
    assert code == 2
    assert "error: --num-perm 2000: must be <= 1024" in lines
    assert "error: --shingle-size 0: must be >= 1" in lines
    assert not any("shingle_size" in ln or "num_perm" in ln for ln in lines)


def test_legacy_scheme_needs_datasketch_mode(inputs, capsys) -> None:
    code, lines = _run(capsys, "dedup", "--explain", "--scheme", "legacy")
    assert code == 2
    assert len(lines) == 1 and "--mode datasketch" in lines[0]


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--ngram", "0", "error: --ngram 0: must be >= 3"),
        ("--fuzzy-threshold", "120", "error: --fuzzy-threshold 120: must be <= 100"),
        ("--min-words", "0", "error: --min-words 0: must be >= 1"),
    ],
)
def test_decontam_flag_errors(inputs, capsys, flag: str, value: str, expected: str) -> None:
    code, lines = _run(
        capsys, "decontam", "in.jsonl", "--against", "bench.txt", "-o", "out", flag, value
    )
    assert code == 2
    assert lines == [expected]


def test_good_flags_still_run(inputs, capsys) -> None:
    try:
        main(["dedup", "--explain", "--bands", "16", "--rows", "8", "--threshold", "0.9"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    assert "0.9" in capsys.readouterr().out


def test_subprocess_exit_code_is_2(inputs) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "builder", "decontam", "in.jsonl", "--against", "bench.txt"]
        + ["-o", "out", "--ngram", "0"],
        cwd=inputs,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --ngram 0: must be >= 3"
