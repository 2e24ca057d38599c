"""Reasoning traces kept apart from the answer: parsed from ``reasoning_content`` and from
``<think>`` on the loopback server, stored whole in the cache and split the same way on a
hit, ignored by schema checks and verification, carried to the document and the export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from builder.cli import main
from builder.config import load_config
from builder.filters import check_row
from builder.llm import open_engine
from builder.reasoning import message_text, split_reasoning
from builder.records import ChatRequest
from builder.settings.llm import LLMSettings
from tests.support.fake_openai_server import FakeOpenAIServer, FakeReply
from tests.support.project import make_project, responder

TRACE = "The user wants a sum. 2 + 2 is 5? No: 2 + 2 = 4."
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}},
    "required": ["answer"],
    "additionalProperties": False,
}


def _settings(srv: FakeOpenAIServer, **kw: Any) -> LLMSettings:
    return LLMSettings(
        base_url=srv.base_url, model="fake-model", backoff_base_s=0.01, backoff_max_s=0.05, **kw
    )


def _ask(settings: LLMSettings, cache: Path, **kw: Any):
    request = ChatRequest(id="q", messages=({"role": "user", "content": "2 + 2?"},), **kw)
    with open_engine(settings, cache_dir=cache, progress=False) as engine:
        return engine.complete(request)


REPLIES = {
    "reasoning_content": lambda answer: FakeReply(answer, reasoning=TRACE),
    "think": lambda answer: FakeReply(f"<think>\n{TRACE}\n</think>\n\n{answer}"),
    # a chat template that opens the block itself: only the closing tag comes back
    "think-close-only": lambda answer: FakeReply(f"{TRACE}\n</think>\n\n{answer}"),
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("form", sorted(REPLIES))
def test_engine_splits_reasoning_and_a_cache_hit_splits_the_same(
    form: str, stream: bool, tmp_path: Path
) -> None:
    with FakeOpenAIServer(responder=lambda body: REPLIES[form]("The answer is 4.")) as srv:
        settings = _settings(srv, stream=stream)
        fresh = _ask(settings, tmp_path / "cache")
        hit = _ask(settings, tmp_path / "cache")
        assert srv.count("chat") == 1
    assert fresh.ok and not fresh.cached and hit.cached
    assert fresh.text == "The answer is 4."
    assert fresh.reasoning == TRACE
    assert (hit.text, hit.reasoning) == (fresh.text, fresh.reasoning)
    assert hit.request_sha256 == fresh.request_sha256


def test_batch_mode_splits_reasoning_like_online_mode(tmp_path: Path) -> None:
    answer = json.dumps({"answer": 4})
    with FakeOpenAIServer(responder=lambda body: FakeReply(answer, reasoning=TRACE)) as srv:
        batch = _ask(_settings(srv, batch=True, batch_poll_s=0.02), tmp_path / "c", schema=SCHEMA)
        assert srv.count("batches") == 1 and srv.count("chat") == 0
        online = _ask(_settings(srv), tmp_path / "c", schema=SCHEMA)
        assert srv.count("chat") == 0  # answered from what the batch stored
    assert batch.ok and batch.parsed == {"answer": 4}
    assert (batch.text, batch.reasoning) == (answer, TRACE)
    assert online.cached and (online.text, online.reasoning) == (answer, TRACE)


def test_cache_key_does_not_depend_on_reasoning(tmp_path: Path) -> None:
    with FakeOpenAIServer(responder=lambda body: FakeReply("4", reasoning=TRACE)) as srv:
        with_trace = _ask(_settings(srv), tmp_path / "a")
        srv.responder = lambda body: "4"
        plain = _ask(_settings(srv), tmp_path / "b")
    assert plain.reasoning is None and with_trace.reasoning == TRACE
    assert plain.request_sha256 == with_trace.request_sha256


@pytest.mark.parametrize("form", ["reasoning_content", "think"])
def test_schema_check_judges_the_answer_only(form: str, tmp_path: Path) -> None:
    # the trace holds a JSON draft that breaks the schema; the answer is valid
    draft = 'Draft: {"answer": "five", "why": 1}. Fix it.'
    answer = json.dumps({"answer": 4})
    reply = (
        FakeReply(answer, reasoning=draft)
        if form == "reasoning_content"
        else FakeReply(f"<think>{draft}</think>{answer}")
    )
    with FakeOpenAIServer(responder=lambda body: reply) as srv:
        result = _ask(_settings(srv), tmp_path / "cache", schema=SCHEMA)
        assert srv.count("chat") == 1  # no repair retry was needed
    assert result.status == "ok", result.error
    assert result.parsed == {"answer": 4}
    assert result.reasoning == draft


def test_reply_cut_while_thinking_has_no_answer(tmp_path: Path) -> None:
    reply = FakeReply("<think>Let me consider the first case, then", finish_reason="length")
    with FakeOpenAIServer(responder=lambda body: reply) as srv:
        result = _ask(_settings(srv), tmp_path / "cache")
    assert result.status == "length"
    assert result.text == "" and result.reasoning == "Let me consider the first case, then"


_plain = st.text(alphabet=st.characters(blacklist_characters="<>"), max_size=40)


@given(reasoning=_plain, answer=_plain)
def test_fold_then_split_round_trips(reasoning: str, answer: str) -> None:
    text = message_text({"content": answer, "reasoning_content": reasoning})
    got = split_reasoning(text)
    if reasoning.strip():
        assert got == (reasoning.strip(), answer.lstrip())
    else:
        assert got == (None, answer)
    assert split_reasoning(answer) == (None, answer)  # no tags: the text is left alone


# --------------------------------------------------------------------------- a whole build


def _wrong_draft(content: str) -> str:
    """A JSON draft of the reply with a wrong answer, as a model might write while thinking."""
    try:
        data = json.loads(content)
    except ValueError:
        return "Draft: the answer is 12345."
    if isinstance(data, dict):
        if "final_answer" in data:
            data = {**data, "final_answer": "12345", "worked_solution": "1 + 1 = 12345"}
        if "solution" in data:
            data = {**data, "solution": data["signature"] + "\n    return -1"}
    return "Draft: " + json.dumps(data)


#: A thinking model going round in circles: were the filters to read the trace, the
#: repetition filter would drop every document that carries it.
LOOP = " ".join(["wait, let me check that step again"] * 40)


def thinking_responder(form: str):
    def respond(body: dict[str, Any]) -> Any:
        reply = responder(body)
        if not isinstance(reply, FakeReply):
            reply = FakeReply(str(reply))
        draft = f"{_wrong_draft(reply.content)} {LOOP}"
        if form == "reasoning_content":
            return FakeReply(reply.content, reply.finish_reason, reasoning=draft)
        return FakeReply(f"<think>{draft}</think>\n{reply.content}", reply.finish_reason)

    return respond


def _run(*argv: str) -> None:
    try:
        main(list(argv))
    except SystemExit as exc:
        assert exc.code in (0, None), f"exit {exc.code}"


@pytest.mark.parametrize("form", ["reasoning_content", "think"])
def test_build_keeps_reasoning_apart_and_verification_ignores_it(form: str, tmp_path: Path) -> None:
    small = {
        "walk": {"subtree": ["arithmetic", "programming"], "limit": 2},
        "generate": {"documents_per_unit": 4, "evolve": False},
        "llm": {"cache_dir": str(tmp_path / "cache")},
    }
    with FakeOpenAIServer(responder=thinking_responder(form)) as srv:
        config = make_project(tmp_path / "p", srv.base_url, small)
        _run("build", "--config", str(config), "--no-progress")
        sent = srv.count("chat")
        config2 = make_project(tmp_path / "p", srv.base_url, small, run="again")
        _run("build", "--config", str(config2), "--no-progress")
        assert srv.count("chat") == sent  # the second build is all cache hits
    runs = tmp_path / "outputs"  # the autouse fixture keeps outputs under tmp_path
    docs = pl.read_parquet(runs / "test" / "documents" / "*.parquet").sort("id")
    again = pl.read_parquet(runs / "again" / "documents" / "*.parquet").sort("id")
    assert docs.height > 0
    assert docs["reasoning"].null_count() == 0
    assert (docs["reasoning_tokens"] > 0).all()
    assert docs["reasoning"].str.contains("Draft").all()
    for text in docs["text"].to_list() + docs["structured"].drop_nulls().to_list():
        assert "Draft" not in text and "<think>" not in text and "12345" not in text
    checked = docs.filter(pl.col("exercise_type").is_in(["code", "quantitative"]))
    assert checked.height >= 2 and checked["verified"].all()  # the wrong drafts were not judged
    # The filters judged the answer only: the looping trace would fail the repetition
    # filter (checked here on the same row with the trace in its text), yet nothing was
    # dropped for repetition and every kind of document kept its trace.
    rejected = pl.read_parquet(runs / "test" / "rejected.parquet")
    assert "repetition" not in rejected["reason"].to_list()
    assert set(docs["kind"]) >= {"section", "exercise"}
    assert docs["reasoning"].str.contains(LOOP, literal=True).all()
    section = docs.filter(pl.col("kind") == "section").row(0, named=True)
    filters = load_config(str(config)).filters  # the build's own filter settings
    assert check_row(section, filters) is None
    with_trace = {**section, "text": f"{section['reasoning']}\n\n{section['text']}"}
    assert check_row(with_trace, filters)[1] == "repetition"
    cols = ["id", "text", "reasoning", "structured"]
    assert again.select(cols).equals(docs.select(cols))  # cache hits split the same way

    out = tmp_path / "export"
    for mode, check in (
        ("include", lambda m, r: m.startswith(f"<think>\n{r}\n</think>\n\n")),
        ("drop", lambda m, r: "<think>" not in m and r not in m),
    ):
        _run("export", "--run", str(runs / "test"), "--format", "chat", "--reasoning", mode,
             "-o", str(out))  # fmt: skip
        rows = pl.read_parquet(out / "data" / "*.parquet")
        assert "reasoning" not in rows.columns
        for messages, doc_id in zip(rows["messages"].to_list(), rows["id"], strict=True):
            trace = docs.filter(pl.col("id") == doc_id)["reasoning"][0]
            assert check(messages[-1]["content"], trace), mode
    _run("export", "--run", str(runs / "test"), "--format", "alpaca", "--reasoning", "as-field",
         "-o", str(out))  # fmt: skip
    rows = pl.read_parquet(out / "data" / "*.parquet")
    assert rows["reasoning"].str.contains("Draft").all()
    assert not rows["output"].str.contains("Draft|<think>").any()
