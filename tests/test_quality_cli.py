"""The quality gates through ``corpus build`` on the loopback fake server: judge parsing,
caching, failures recorded, semantic dedup, the card and the report (headless Chromium)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from builder.cli import main
from tests.support.fake_openai_server import FakeOpenAIServer
from tests.support.project import judging_responder, make_project, responder

SMALL = {
    "walk": {"subtree": ["arithmetic"], "limit": 2},
    "generate": {"documents_per_unit": 2, "evolve": False},
    "judge": {"enabled": True},
    "filters": {"min_edu_score": 3},
    "dedup": {"semantic": True, "semantic_threshold": 0.97},
}


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("quality")
    server = FakeOpenAIServer(responder=judging_responder).start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CORPUS_CACHE_DIR", str(root / "cache"))
        mp.setenv("CORPUS_OUTPUT_DIR", str(root / "outputs"))
        config = make_project(root / "p", server.base_url, SMALL)
        main_args = ["build", "--config", str(config), "--no-progress", "--json"]
        try:
            main(main_args)
        except SystemExit as exc:
            assert not exc.code
        judge_calls = sum(
            1 for b in server.requests if "score" in json.dumps(b.get("response_format"))
        )
        yield {"config": config, "server": server, "root": root, "judge_calls": judge_calls}
    server.stop()


@pytest.fixture
def same_dirs(built: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Point this test at the module build's cache and outputs (conftest isolates each test)."""
    monkeypatch.setenv("CORPUS_CACHE_DIR", str(built["root"] / "cache"))
    monkeypatch.setenv("CORPUS_OUTPUT_DIR", str(built["root"] / "outputs"))


def _run(built: dict[str, Any]) -> Path:
    return built["root"] / "outputs" / "test"


def test_judge_scores_filter_and_record_failures(built: dict[str, Any]) -> None:
    run = _run(built)
    docs = pl.read_parquet(run / "documents" / "*.parquet")
    rejected = pl.read_parquet(run / "rejected.parquet")
    assert built["judge_calls"] > 0
    for col in (
        "edu_score",
        "judge_rationale",
        "judge_model",
        "judge_error",
        "relevance",
        "code_ok",
    ):
        assert col in docs.columns, col
    judged = docs.filter(pl.col("edu_score").is_not_null())
    assert judged.height > 0 and judged["edu_score"].min() >= 3
    assert set(judged["judge_model"]) == {"fake-model"}
    low = rejected.filter(pl.col("reason") == "low_value")
    assert low.height > 0 and (low["edu_score"] < 3).all()
    assert low["detail"][0].startswith("edu_score 1 < min_edu_score 3: A bare drill")
    # a broken verdict is recorded on the kept document, not dropped silently
    failed = docs.filter(pl.col("judge_error").is_not_null())
    assert failed.height >= 1 and failed["edu_score"].null_count() == failed.height
    marker = json.loads((run / "work" / "_done" / "quality.json").read_text())
    stats = marker["counters"]["stats"]
    assert stats["judge"]["failed"] == failed.height
    assert stats["judge"]["low_value"] == low.height


def test_rerun_sends_no_judge_request(built: dict[str, Any], same_dirs: None, capsys) -> None:
    server: FakeOpenAIServer = built["server"]
    before = server.count("chat")
    code, out, err = run_cli(capsys, "build", "--config", str(built["config"]), "--no-progress")
    assert code == 0, err
    assert server.count("chat") == before
    # a changed judge template re-asks only the judge, answered from nothing cached
    tpl = built["config"].parent / "templates" / "judge" / "edu_value.j2"
    tpl.write_text(tpl.read_text() + "\nBe strict.\n", encoding="utf-8")
    code, out, err = run_cli(capsys, "build", "--config", str(built["config"]), "--no-progress")
    assert code == 0, err
    assert server.count("chat") - before == built["judge_calls"]


def test_plan_includes_the_judge(built: dict[str, Any], same_dirs: None, capsys) -> None:
    code, out, err = run_cli(capsys, "plan", "--config", str(built["config"]), "--json")
    assert code == 0, err
    data = json.loads(out)
    rows = {r["discipline"]: r for r in data["per_discipline"]}
    assert rows["(judge)"]["requests"] > 0


def test_card_and_report_show_quality_and_diversity(built: dict[str, Any]) -> None:
    run = _run(built)
    card = (run / "README.md").read_text(encoding="utf-8")
    assert "## Quality gates and diversity" in card
    assert "Llama 2 Community License" in card and "Vendi score" in card
    data = run / "work" / "diversity"
    nodes = pl.read_parquet(data / "quality_nodes.parquet")
    assert {"compression_ratio", "distinct_4", "mean_similarity", "vendi"} <= set(nodes.columns)
    assert "(all)" in nodes["node"].to_list()
    # the map: every document (under the map's limit), coloured by its discipline
    emap = pl.read_parquet(data / "quality_map.parquet")
    docs = pl.read_parquet(run / "documents" / "*.parquet")
    assert sorted(emap["id"]) == sorted(docs["id"])
    labels = dict(zip(docs["id"], docs["discipline"], strict=True))
    assert [labels[i] for i in emap["id"]] == emap["label"].to_list()
    html = (run / "report.html").read_text(encoding="utf-8")
    assert 'id="fig-map"' in html and "Quality gates and diversity" in html


def test_report_map_renders_in_headless_chromium(built: dict[str, Any], tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    url = (_run(built) / "report.html").resolve().as_uri()
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    ).stdout
    assert 'data-plots-broken="0"' in dom
    fig = re.search(r'<figure id="fig-map"><img class="plot"[^>]*>', dom)
    assert fig is not None
    assert int(re.search(r'data-natural-width="(\d+)"', fig.group(0)).group(1)) >= 800
    assert "<th>vendi</th>" in dom and "<th>distinct_2</th>" in dom


@pytest.mark.integration
def test_judge_on_the_embedded_model(tmp_path: Path) -> None:
    """Mechanics only (the tiny model's grades change with the CPU): each document gets a
    0-5 score or a recorded error, the judge model is named, the server stops."""
    from builder.llm import open_engine
    from builder.quality.judge import judge_frame, load_judge_template
    from builder.settings.llm import LLMSettings
    from builder.settings.quality import JudgeSettings
    from tests.support.processes import wait_gone

    root = Path(__file__).resolve().parent.parent
    template = load_judge_template(root / "templates" / "judge" / "edu_value.j2")
    frame = pl.DataFrame(
        {
            "id": ["a", "b"],
            "kind": ["section", "exercise"],
            "topic": ["fractions", "fractions"],
            "text": [
                "A fraction names equal parts of a whole: 3/4 is three of four equal parts.",
                "Compute 1/2 + 1/4. Solution: 1/2 = 2/4, so the sum is 3/4.",
            ],
        }
    )
    settings = JudgeSettings(enabled=True, max_tokens=60)
    with open_engine(LLMSettings(temperature=0.0), cache_dir=tmp_path / "c", progress=False) as e:
        judged, stats = judge_frame(frame, e, template, settings)
        pid = e.embedded.proc.pid
    assert stats.documents == 2 and stats.judged + stats.failed == 2
    for row in judged.iter_rows(named=True):
        assert (row["edu_score"] is not None and 0 <= row["edu_score"] <= 5) != (
            row["judge_error"] is not None
        )
        assert row["judge_model"] == "SmolLM2-135M-Instruct.Q4_1"
    assert wait_gone(pid), "the embedded server outlived the engine"


def test_judge_respects_the_budget_and_resumes(tmp_path: Path, capsys) -> None:
    no_judge = {**SMALL, "judge": {"enabled": False}, "filters": {}}
    with FakeOpenAIServer(responder=judging_responder) as server:
        config = make_project(tmp_path / "p", server.base_url, no_judge)
        code, _, err = run_cli(capsys, "build", "--config", str(config), "--no-progress")
        assert code == 0, err
        judged_config = make_project(tmp_path / "p", server.base_url, SMALL)
        before = server.count("chat")
        # A judge request's worst case (prompt + 300 tokens, plus a repair retry) is ~$0.0033
        # at the test prices; each costs ~$0.0007: the cap lets one or two through.
        code, out, err = run_cli(
            capsys, "build", "--config", str(judged_config), "--no-progress", "--max-cost", "0.0036"
        )
        assert code == 3 and "--max-cost $0.0036 reached" in err and "Traceback" not in err
        sent = server.count("chat") - before
        assert 0 < sent < 5, err  # the generation came from the cache; the cap stopped the judge
        code, out, err = run_cli(capsys, "build", "--config", str(judged_config), "--no-progress")
        assert code == 0, err
        # the rerun sends only what the capped run did not: finished verdicts were cached
        assert server.count("chat") - before == 5
    docs = pl.read_parquet(tmp_path / "outputs" / "test" / "documents" / "*.parquet")
    assert docs["edu_score"].drop_nulls().len() + docs["judge_error"].drop_nulls().len() == (
        docs.height
    )


def test_plan_prices_a_separate_judge_endpoint(tmp_path: Path, capsys) -> None:
    """A judge with its own endpoint and model is priced by that model; nothing is sent
    (the judge's URL has no server: any request would fail)."""
    closed = "http://127.0.0.1:9/v1"
    judge = {"enabled": True, "base_url": closed, "model": "judge-model"}
    config = make_project(tmp_path / "p", closed, {**SMALL, "judge": judge})
    code, out, err = run_cli(capsys, "plan", "--config", str(config), "--json")
    assert code == 0, err
    row = {r["discipline"]: r for r in json.loads(out)["per_discipline"]}["(judge)"]
    assert row["requests"] > 0 and row["cost_usd"] is None  # judge-model has no price
    assert "judge-model" in json.loads(out)["unpriced_models"]
    text = config.read_text() + '\n[llm.prices."judge-model"]\ninput = 100.0\noutput = 0.0\n'
    config.write_text(text, encoding="utf-8")
    code, out, err = run_cli(capsys, "plan", "--config", str(config), "--json")
    assert code == 0, err
    row = {r["discipline"]: r for r in json.loads(out)["per_discipline"]}["(judge)"]
    assert row["cost_usd"] == pytest.approx(row["input_tokens"] * 100.0 / 1e6, rel=1e-3)


def test_a_judge_on_its_own_endpoint_is_metered_and_capped_with_the_build(
    tmp_path: Path, capsys
) -> None:
    """``[judge] base_url``: the judge's requests go to its own server, count in the build's
    ledger and stop at the build's ``--max-cost`` like the teacher's; a rerun resumes."""
    no_judge = {**SMALL, "judge": {"enabled": False}, "filters": {}}
    with (
        FakeOpenAIServer(responder=responder) as teacher,
        FakeOpenAIServer(responder=judging_responder) as judge_srv,
    ):
        config = make_project(tmp_path / "p", teacher.base_url, no_judge)
        code, _, err = run_cli(capsys, "build", "--config", str(config), "--no-progress")
        assert code == 0, err
        taught = teacher.count("chat")
        ledger = tmp_path / "outputs" / "test" / "work" / "ledger.json"
        assert json.loads(ledger.read_text())["requests_sent"] == taught
        judge = {"enabled": True, "base_url": judge_srv.base_url, "model": "judge-model"}
        judged = {
            **SMALL,
            "judge": judge,
            'llm.prices."judge-model"': {"input": 1.0, "output": 2.0},
        }
        config = make_project(tmp_path / "p", teacher.base_url, judged)
        # At the test prices a judge request costs ~$0.0007 and its worst case ~$0.0033:
        # the cap lets one or two through.
        code, _, err = run_cli(
            capsys, "build", "--config", str(config), "--no-progress", "--max-cost", "0.0036"
        )
        assert code == 3 and "--max-cost $0.0036 reached" in err and "Traceback" not in err
        capped = judge_srv.count("chat")
        assert 0 < capped < 5, err
        assert teacher.count("chat") == taught  # generation came from the cache
        code, _, err = run_cli(capsys, "build", "--config", str(config), "--no-progress")
        assert code == 0, err
        assert judge_srv.count("chat") == 5 and teacher.count("chat") == taught
        # the ledger counts requests (a repair retry is a second HTTP call of the same one)
        asked = sum(
            1 for b in judge_srv.requests if [m["role"] for m in b["messages"]].count("user") == 1
        )
        assert 0 < asked < 5
        stats = json.loads(ledger.read_text())
        assert stats["requests_sent"] == taught + asked  # the judge's requests are the build's
        assert stats["cost_usd"] > 0.0036
    docs = pl.read_parquet(tmp_path / "outputs" / "test" / "documents" / "*.parquet")
    assert set(docs["judge_model"].drop_nulls()) == {"judge-model"}
