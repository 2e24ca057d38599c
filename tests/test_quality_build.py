"""Relevance, code checks and semantic dedup through ``corpus build`` on the fake server."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from builder.cli import main
from tests.support.fake_openai_server import FakeOpenAIServer
from tests.support.project import make_project

VARIABLES = (
    "A variable is a name that refers to a value. In Python you create one with an "
    "assignment such as count = 3, and the name count then refers to the integer 3. Every "
    "value has a type: integers like 3, floating point numbers like 2.5, and strings like "
    "'hello'. The built-in function type tells you the type of any value, and you can change "
    "what a name refers to by assigning again, even to a value of another type. Choose names "
    "that say what the value means, such as total_price rather than tp, so that the program "
    "reads like a description of the problem. Numbers and strings do not mix: adding the "
    "string '3' to the integer 4 raises a TypeError, so convert with int or str first.\n\n"
    "```python\n>>> count = 3\n>>> type(count).__name__\n'int'\n>>> count + int('4')\n7\n```\n"
)
KING = (
    "Once upon a time a king had three sons who lived in a castle by the sea. The eldest "
    "wanted the throne, the second loved his horses and the youngest wandered the forest "
    "every day. One winter the king fell ill and sent his sons across the kingdom to find a "
    "healer. The eldest rode to the mountains, the second sailed to the islands and the "
    "youngest followed a fox into the woods, where an old woman gave him a silver apple. "
    "When he returned, the king ate the apple and was well again, and the youngest son was "
    "given half of the kingdom and a fine white horse for his kindness and his patience."
)
FUNCTIONS_WRONG = (
    "A function is a named block of code that takes parameters and returns a value. You "
    "define one with def, list its parameters in parentheses, and use return to send the "
    "result back to the caller. Variables created inside a function are local to it: they "
    "exist only while the function runs, which is what scope means. Calling a function with "
    "arguments binds each parameter to its argument, runs the body, and evaluates to the "
    "returned value, or to None when there is no return statement in the function body.\n\n"
    "```python\ndef double(n):\n    return 2 * n\n```\n\n"
    "```python\n>>> double(4)\n9\n```\n"
)


def paraphrase(text: str) -> str:
    """Every fourth word of the prose changed: MinHash's word 5-grams no longer match, the
    meaning (and the bag of words) hardly moves."""
    prose, _, code = text.partition("```")
    words = prose.split(" ")
    out = [w + "s" if i % 4 == 3 and w.isalpha() else w for i, w in enumerate(words)]
    return " ".join(out) + ("```" + code if code else "")


def reply(body: dict[str, Any], _seen: dict[str, set[int]] = {}) -> Any:  # noqa: B006
    """Per topic, the first seed asked gets the first text, any other seed the second (two
    documents per unit; their arrival order does not change which texts exist)."""
    prompt = body["messages"][-1]["content"]
    topic = re.search(r'"([^"]+)"', prompt).group(1)
    seeds = _seen.setdefault(topic, set())
    if not seeds:
        seeds.add(int(body.get("seed") or 0))
    sample = 0 if int(body.get("seed") or 0) in seeds else 1
    if topic.startswith("Variables"):
        return VARIABLES if sample == 0 else paraphrase(VARIABLES)
    return KING if sample == 0 else FUNCTIONS_WRONG


OVERRIDES = {
    "walk": {"subtree": ["programming"], "use_syllabi": False, "limit": 2},
    "syllabus": {"generate_missing": False},
    "generate": {"documents_per_unit": 2, "evolve": False, "templates": ["section"]},
    # min_relevance None: the key is left out, so the build runs the default threshold
    "filters": {"min_tokens": 40, "min_relevance": None},
    "dedup": {"semantic": True, "semantic_threshold": 0.9},
}


def fresh_reply() -> Any:
    seen: dict[str, set[int]] = {}
    return lambda body: reply(body, seen)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    with FakeOpenAIServer(responder=fresh_reply()) as server:
        config = make_project(tmp_path / "p", server.base_url, OVERRIDES)
        try:
            main(["build", "--config", str(config), "--no-progress"])
        except SystemExit as exc:
            assert not exc.code
    return tmp_path / "outputs" / "test"


def test_gates_in_a_build(run: Path) -> None:
    docs = pl.read_parquet(run / "documents" / "*.parquet")
    rejected = pl.read_parquet(run / "rejected.parquet")
    reasons = dict(zip(rejected["text"].to_list(), rejected["reason"].to_list(), strict=True))
    # relevance: the king story is dropped off topic, with its score in the detail
    assert reasons[KING] == "off_topic"
    detail = rejected.filter(pl.col("text") == KING)["detail"][0]
    assert re.fullmatch(r"relevance -?0\.\d+ < min_relevance 0\.25", detail)
    assert (docs["relevance"] >= 0.25).all()
    # code in prose: a wrong >>> example is flagged (kept: drop_code_errors is off)
    wrong = docs.filter(pl.col("text").str.starts_with("A function is"))
    assert wrong["code_ok"].to_list() == [False] and "double(4)" in wrong["code_detail"][0]
    assert docs.filter(pl.col("text").str.starts_with("A variable"))["code_ok"].to_list() == [True]
    # semantic dedup: the paraphrase passed MinHash, then was removed as semantic_dup
    sem = rejected.filter(pl.col("reason") == "semantic_dup")
    assert sem.height == 1 and sem["stage"].to_list() == ["dedup"]
    kept_variant = docs.filter(pl.col("text").str.starts_with("A variable is a"))  # either variant
    assert kept_variant.height == 1
    assert sem["representative_id"][0] == kept_variant["id"][0]
    assert sem["dup_cluster"][0] == kept_variant["dup_cluster"][0] == f"sem-{kept_variant['id'][0]}"
    nodes = pl.read_parquet(run / "work" / "semdedup" / "nodes.parquet")
    prog = nodes.filter(pl.col("node") == "computing/programming/variables")
    assert prog["semantic_dup"].to_list() == [1]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stats"]["semdedup"]["removed"] == 1
    # the gate's own cost is counted for bench/build_scale.py (documents per CPU-second)
    quality = json.loads((run / "work" / "_done" / "quality.json").read_text())["counters"]
    assert quality["stats"]["relevance_docs"] == quality["rows_in"] == 4
    assert quality["stats"]["relevance_cpu_seconds"] > 0


def test_drop_code_errors(tmp_path: Path) -> None:
    overrides = {**OVERRIDES, "filters": {**OVERRIDES["filters"], "drop_code_errors": True}}
    with FakeOpenAIServer(responder=fresh_reply()) as server:
        config = make_project(tmp_path / "p", server.base_url, overrides)
        try:
            main(["build", "--config", str(config), "--no-progress"])
        except SystemExit as exc:
            assert not exc.code
    rejected = pl.read_parquet(tmp_path / "outputs" / "test" / "rejected.parquet")
    bad = rejected.filter(pl.col("reason") == "code_error")
    assert bad["text"].to_list() == [FUNCTIONS_WRONG.strip()]
    assert bad["stage"].to_list() == ["quality"]


def test_embeddings_endpoint_in_a_build(tmp_path: Path) -> None:
    """[embeddings] naming an endpoint: relevance comes from /v1/embeddings (cached)."""
    with FakeOpenAIServer(responder=fresh_reply()) as server:
        overrides = {
            **OVERRIDES,
            "embeddings": {"base_url": server.base_url, "model": "fake-embed"},
            "filters": {"min_tokens": 40, "min_relevance": -1},
        }
        config = make_project(tmp_path / "p", server.base_url, overrides)
        for _ in range(2):
            try:
                main(["build", "--config", str(config), "--no-progress"])
            except SystemExit as exc:
                assert not exc.code
        calls = server.count("embeddings")
        assert calls >= 1
        marker = tmp_path / "outputs" / "test" / "work" / "_done" / "quality.json"
        first = json.loads(marker.read_text())["fingerprint"]
        # a different threshold recomputes the gate, and every vector comes from the cache
        config.write_text(config.read_text().replace("min_relevance = -1", "min_relevance = 0"))
        try:
            main(["build", "--config", str(config), "--no-progress"])
        except SystemExit as exc:
            assert not exc.code
        assert server.count("embeddings") == calls
        assert json.loads(marker.read_text())["fingerprint"] != first
    docs = pl.read_parquet(tmp_path / "outputs" / "test" / "documents" / "*.parquet")
    assert docs["relevance"].null_count() == 0 and (docs["relevance"] >= 0).all()
    stats = json.loads((tmp_path / "outputs" / "test" / "manifest.json").read_text())["stats"]
    assert stats["quality"]["relevance"]["embedder"] == "fake-embed"


def _build(config: Path, *extra: str) -> int:
    try:
        main(["build", "--config", str(config), "--no-progress", *extra])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def test_embeddings_endpoint_spends_from_the_builds_budget(tmp_path: Path, capsys) -> None:
    """An [embeddings] endpoint is capped by the build's --max-cost, even on a rerun whose
    generation is already done (no chat request sent: the teacher's engine never opens),
    and its spend is counted in the run's ledger."""
    plain = {**OVERRIDES, "filters": {"min_tokens": 40, "min_relevance": -1}}
    with FakeOpenAIServer(responder=fresh_reply()) as server:
        config = make_project(tmp_path / "p", server.base_url, plain)
        assert _build(config) == 0
        chats = server.count("chat")
        ledger = tmp_path / "outputs" / "test" / "work" / "ledger.json"
        spent = json.loads(ledger.read_text())["cost_usd"]
        endpoint = {
            **plain,
            "embeddings": {"base_url": server.base_url, "model": "fake-embed"},
            'llm.prices."fake-embed"': {"input": 1000.0, "output": 0.0},
        }
        config = make_project(tmp_path / "p", server.base_url, endpoint)
        capsys.readouterr()
        assert _build(config, "--max-cost", "0.001") == 3
        err = capsys.readouterr().err
        assert "--max-cost $0.001 reached" in err and "Traceback" not in err, err
        assert server.count("embeddings") == 0  # stopped before the first request
        assert _build(config) == 0
        assert server.count("embeddings") >= 1 and server.count("chat") == chats
        # the embeddings' spend is the build's: the ledger grew by it
        assert json.loads(ledger.read_text())["cost_usd"] > spent


def test_semantic_duplicates_are_reported_per_node_when_not_removed(tmp_path: Path) -> None:
    """[dedup] semantic = false (the default): the paraphrase is kept, and counted per node
    in the semdedup table, the quality data, the card and the report."""
    overrides = {**OVERRIDES, "dedup": {"semantic": None, "semantic_threshold": 0.9}}
    with FakeOpenAIServer(responder=fresh_reply()) as server:
        config = make_project(tmp_path / "p", server.base_url, overrides)
        assert _build(config) == 0
    run = tmp_path / "outputs" / "test"
    docs = pl.read_parquet(run / "documents" / "*.parquet")
    rejected = pl.read_parquet(run / "rejected.parquet")
    assert rejected.filter(pl.col("reason") == "semantic_dup").height == 0
    assert docs.filter(pl.col("text").str.starts_with("A variable is a")).height == 2
    node = "computing/programming/variables"
    sem = pl.read_parquet(run / "work" / "semdedup" / "nodes.parquet")
    assert sem.filter(pl.col("node") == node)["semantic_dup"].to_list() == [1]
    # Nothing removed: the survivors file is dedup's, copied byte for byte.
    survivors = (run / "work" / "semdedup" / "kept.parquet").read_bytes()
    assert survivors == (run / "work" / "dedup" / "kept.parquet").read_bytes()
    quality = pl.read_parquet(run / "work" / "diversity" / "quality_nodes.parquet")
    assert quality.filter(pl.col("node") == node)["semantic_dups"].to_list() == [1]
    card = (run / "README.md").read_text(encoding="utf-8")
    assert "Semantic near-duplicates: threshold: 0.9; duplicates: 1; removed: 0" in card
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "<th>semantic_dups</th>" in html
