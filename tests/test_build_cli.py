"""``corpus plan``, ``corpus build`` and ``corpus report`` through the CLI entry point.

Commands run in-process through ``builder.cli.main`` (what the ``corpus`` script calls), so
user errors go through the same handler as in a terminal: one line on stderr, exit code 2.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from builder.cli import main
from tests.support.fake_openai_server import FakeOpenAIServer
from tests.support.project import make_project, responder

SMALL: dict[str, dict[str, Any]] = {
    "walk": {"subtree": ["arithmetic"], "limit": 2},
    "generate": {"documents_per_unit": 2, "evolve": False},
}
CLOSED = "http://127.0.0.1:9/v1"  # nothing listens here: any request would fail loudly


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``corpus ARGV`` in-process; returns (exit code, stdout, stderr)."""
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def server() -> Any:
    with FakeOpenAIServer(responder=responder) as srv:
        yield srv


@pytest.fixture(scope="module")
def built(server: FakeOpenAIServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One build of the small project as run ``v2`` (``--run``), shared by the tests that
    only read it or rerun it (a full build is the slow part of this module). Its own cache
    and output directories: the conftest isolates each test, not each module."""
    root = tmp_path_factory.mktemp("built")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CORPUS_CACHE_DIR", str(root / "cache"))
        mp.setenv("CORPUS_OUTPUT_DIR", str(root / "outputs"))
        config = make_project(root / "p", server.base_url, SMALL)
        out, err = io.StringIO(), io.StringIO()
        argv = ["build", "--config", str(config), "--run", "v2", "--no-progress"]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(argv)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    return {
        "root": root,
        "config": config,
        "code": code,
        "out": out.getvalue(),
        "err": err.getvalue(),
        "sent": server.count("chat"),
    }


@pytest.fixture
def same_dirs(built: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Point this test at the module build's cache and outputs."""
    monkeypatch.setenv("CORPUS_CACHE_DIR", str(built["root"] / "cache"))
    monkeypatch.setenv("CORPUS_OUTPUT_DIR", str(built["root"] / "outputs"))


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_build_prints_summary_and_where_things_are(
    built: dict[str, Any],
    server: FakeOpenAIServer,
    same_dirs: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = built["code"], built["out"], built["err"]
    assert code == 0, err
    paths = {}
    for line in out.splitlines():
        label, _, value = line.partition(":")
        if label in ("card", "report", "shards"):
            paths[label] = Path(value.strip())
    assert paths["card"].name == "README.md" and paths["card"].is_file()
    assert paths["report"].name == "report.html" and paths["report"].is_file()
    assert paths["shards"].is_dir() and list(paths["shards"].glob("part-*.parquet"))
    assert "documents:" in out and "tokens:" in out and "cost: $" in out and "time:" in out
    assert "[generate]" in err and "[assemble]" in err  # stage log lines go to stderr
    assert "up to date" not in out
    assert built["sent"] > 0
    sent = server.count("chat")

    config = str(built["config"])
    code, out, err = run_cli(capsys, "build", "--config", config, "--run", "v2", "--no-progress")
    assert code == 0, err
    assert "is up to date: nothing to do" in out
    assert server.count("chat") == sent

    code, out, _ = run_cli(capsys, "build", "--config", config, "--run", "v2", "--json")
    data = json.loads(out)
    assert data["up_to_date"] is True and data["documents"] > 0
    assert Path(data["card"]) == paths["card"]


def test_build_run_option_writes_another_run(
    built: dict[str, Any], same_dirs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert built["code"] == 0, built["err"]
    config = str(built["config"])
    code, out, err = run_cli(capsys, "build", "--config", config, "--run", "v2", "--json")
    assert code == 0, err
    data = json.loads(out)
    run_dir = Path(data["run_dir"])
    assert run_dir.name == "v2"
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["run"] == "v2"
    # the configured run ("test") was not written: --run chose where everything went
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["v2"]


def test_plan_prints_requests_tokens_and_cost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_project(tmp_path / "p", CLOSED, {"generate": {"documents_per_unit": 2}})
    code, out, err = run_cli(capsys, "plan", "--config", str(config))
    assert code == 0, err
    assert "model: fake-model" in out
    for name in ("computing", "mathematics", "(syllabi)", "TOTAL"):
        assert name in out
    assert "$" in out and "?" not in out.split("requests:")[0]
    assert "missing syllabi: programming, algorithms, arithmetic" in out

    code, out, err = run_cli(capsys, "plan", "--config", str(config), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["syllabus_requests"] == 3
    assert data["generation_requests"] == data["units"] * 2
    total = data["total"]
    assert total["requests"] == sum(r["requests"] for r in data["per_discipline"])
    assert total["cached"] == 0 and total["to_send"] == total["requests"]
    assert total["input_tokens"] > 0 and total["cost_usd"] > 0
    assert total["max_cost_usd"] >= total["cost_usd"]


def test_plan_without_a_price_shows_unknown_cost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_project(tmp_path / "p", CLOSED, {"llm": {"model": "other-model"}})
    code, out, err = run_cli(capsys, "plan", "--config", str(config))
    assert code == 0, err
    assert "no price for: other-model" in out
    code, out, _ = run_cli(capsys, "plan", "--config", str(config), "--json")
    assert json.loads(out)["total"]["cost_usd"] is None


def test_report_rerenders_card_and_report(
    built: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert built["code"] == 0, built["err"]
    # a copy of the built project and its outputs: this test deletes files
    shutil.copytree(built["root"] / "p", tmp_path / "p")
    shutil.copytree(built["root"] / "outputs", tmp_path / "outputs")
    monkeypatch.setenv("CORPUS_OUTPUT_DIR", str(tmp_path / "outputs"))
    config = tmp_path / "p" / "corpus.toml"
    run_dir = tmp_path / "outputs" / "v2"
    card, report = run_dir / "README.md", run_dir / "report.html"
    assert card.is_file() and report.is_file()
    card.unlink()
    report.unlink()
    code, out, err = run_cli(capsys, "report", str(run_dir))
    assert code == 0, err
    assert card.is_file() and report.is_file()
    report.unlink()
    code, out, err = run_cli(capsys, "report", "--config", str(config), "--run", "v2")
    assert code == 0, err
    assert report.is_file()
    assert not (built["root"] / "outputs" / "v2" / "README.md").samefile(card)
    code, out, err = run_cli(capsys, "report", str(tmp_path / "nothing-here"))
    assert code == 2
    assert len(_lines(err)) == 1 and "manifest.json" in err


def test_max_cost_stops_with_exit_3_then_rerun_finishes(
    server: FakeOpenAIServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_project(tmp_path / "p", server.base_url, SMALL)
    code, out, err = run_cli(capsys, "build", "--config", str(config), "--max-cost", "0.005")
    assert code == 3
    assert "--max-cost $0.005 reached" in _lines(err)[-1] and "Traceback" not in err
    code, out, err = run_cli(capsys, "build", "--config", str(config), "--json")
    assert code == 0, err
    assert json.loads(out)["documents"] > 0


# --------------------------------------------------------------------------- user errors


def _edit(config: Path, old: str, new: str) -> None:
    text = config.read_text(encoding="utf-8")
    assert old in text, old
    config.write_text(text.replace(old, new, 1), encoding="utf-8")


def _line_of(config: Path, needle: str) -> int:
    for i, line in enumerate(config.read_text(encoding="utf-8").splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(needle)


BAD_CONFIGS = {
    # name: (old text, new text, expected in the error line, line holding the problem)
    "unknown key": ("seed = 3", "seed = 3\nlimt = 4", "unknown key 'walk.limt'", "limt"),
    "unknown section": ("[taxonomy]", "[taxonomie]\nx = 1\n\n[taxonomy]", "taxonomie", None),
    "bad value": ("seed = 3", "seed = 3\nlimit = -1", "walk.limit", "limit = -1"),
    "wrong type": (
        "documents_per_unit = 4",
        'documents_per_unit = "four"',
        "generate.documents_per_unit",
        "documents_per_unit",
    ),
    "invalid toml": ("seed = 3", "seed = = 3", "invalid TOML", "seed = = 3"),
    "missing taxonomy": ('dir = "taxonomy"', 'dir = "no-such-dir"', "no-such-dir", None),
    "missing templates": (
        'templates_dir = "templates"',
        'templates_dir = "no-templates"',
        "no-templates",
        None,
    ),
    "missing benchmark": (
        "benchmarks/bench.jsonl",
        "benchmarks/missing.jsonl",
        "benchmark file not found: benchmarks/missing.jsonl",
        "benchmarks =",
    ),
    "unknown subtree": (
        'order = "curriculum"',
        'order = "curriculum"\nsubtree = ["arithmetik"]',
        "unknown taxonomy id 'arithmetik'",
        "subtree",
    ),
    "unknown template": (
        "documents_per_unit = 4",
        'documents_per_unit = 4\ntemplates = ["sektion"]',
        "unknown template 'sektion'",
        "templates = [",
    ),
}


@pytest.mark.parametrize("command", ["build", "plan"])
@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_gives_one_line_and_exit_2(
    case: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_project(tmp_path / "p", CLOSED)
    old, new, expected, line_of = BAD_CONFIGS[case]
    _edit(config, old, new)
    code, out, err = run_cli(capsys, command, "--config", str(config))
    if case == "missing benchmark" and command == "plan":
        # A dry run warns and goes on: the plan does not depend on benchmark files.
        assert code == 0, (out, err)
        assert _lines(err) == [
            f"warning: [decontam] {expected} (looked at "
            f"{config.parent / 'benchmarks' / 'missing.jsonl'})"
        ]
        assert "TOTAL" in out
        return
    assert code == 2, (out, err)
    lines = _lines(err)
    assert len(lines) == 1, err
    assert expected in lines[0]
    assert "Traceback" not in err
    if line_of is not None:
        assert lines[0].startswith(f"{config}:{_line_of(config, line_of)}:"), lines[0]
    # Nothing was started or written (outputs go to CORPUS_OUTPUT_DIR under pytest).
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "p" / "outputs").exists()


def test_missing_config_file_and_bad_run_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = run_cli(capsys, "build", "--config", str(tmp_path / "nope.toml"))
    assert code == 2
    assert _lines(err) == [
        f"{tmp_path / 'nope.toml'}: config file not found "
        + err.split("config file not found ", 1)[1].strip()
    ]
    config = make_project(tmp_path / "p", CLOSED)
    code, _out, err = run_cli(capsys, "build", "--config", str(config), "--run", "../elsewhere")
    assert code == 2
    assert len(_lines(err)) == 1 and "bad run name" in err


def test_taxonomy_problem_names_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_project(tmp_path / "p", CLOSED)
    yaml = tmp_path / "p" / "taxonomy" / "computing.yaml"
    _edit(yaml, "prerequisites: [programming]", "prerequisites: [programing]")
    code, _out, err = run_cli(capsys, "build", "--config", str(config))
    assert code == 2
    lines = _lines(err)
    assert len(lines) == 1 and "programing" in lines[0]
    assert lines[0].startswith(f"{yaml}:{_line_of(yaml, 'programing')}:")


@pytest.mark.parametrize(
    "name",
    [
        "corpus.toml",
        "examples/openai.toml",
        "examples/local-server.toml",
        "examples/local-llama-cpp.toml",
    ],
)
def test_shipped_configs_plan_offline_without_a_key(
    name: str, project_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo and example configs are valid, their paths exist, and `corpus plan` works
    with no API key set and no server running (conftest clears OPENAI_API_KEY)."""
    code, out, err = run_cli(capsys, "plan", "--config", str(project_root / name), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["units"] > 0 and data["generation_requests"] > 0
    assert data["total"]["requests"] > data["generation_requests"]
