"""The verification API the generation stage calls: verify_document / verify_documents.

Where a model is involved (the quantitative second sample) it is the real engine
(``open_engine``) talking to the loopback fake OpenAI server, so the request the verifier
builds, the cache and the retries are the real ones.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.llm import open_engine
from builder.llm.engine import Engine
from builder.settings.filters import VerifySettings
from builder.settings.llm import LLMSettings
from builder.verify import (
    FAILURE_REASONS,
    REASONS,
    Verdict,
    sandbox_pools,
    verify_document,
    verify_documents,
)
from tests.support.fake_openai_server import FakeOpenAIServer

# A wall-clock limit far above what a check takes on a loaded CPU: only the tests that
# expect a timeout set a short one (a check's verdict must not depend on the machine).
FAST = VerifySettings(timeout_s=10, memory_mb=256, max_output_kb=16)


@contextmanager
def engine_for(srv: FakeOpenAIServer, cache: Path) -> Iterator[Engine]:
    """The real engine on the fake server, failing fast (one attempt, tiny backoff)."""
    llm = LLMSettings(
        base_url=srv.base_url,
        model="fake-model",
        max_attempts=1,
        backoff_base_s=0.01,
        backoff_max_s=0.02,
    )
    with open_engine(llm, cache_dir=cache, progress=False) as engine:
        yield engine


def user_messages(srv: FakeOpenAIServer) -> list[str]:
    return [body["messages"][-1]["content"] for body in srv.requests]


def code_doc(solution: str, tests: str, doc_id: str = "c1") -> dict:
    return {
        "id": doc_id,
        "kind": "exercise",
        "exercise_type": "code",
        "structured": {
            "signature": "def f(...)",
            "problem": "Write f.",
            "tests": tests,
            "solution": solution,
        },
    }


def quant_doc(final: str, worked: str, problem: str = "Compute it.", doc_id: str = "q1") -> dict:
    return {
        "id": doc_id,
        "kind": "exercise",
        "exercise_type": "quantitative",
        "structured": {"problem": problem, "worked_solution": worked, "final_answer": final},
    }


ADD_OK = code_doc(
    "def add(a, b):\n    return a + b\n", "def test_add():\n    assert add(2, 3) == 5\n"
)
ADD_WRONG = code_doc(
    "def add(a, b):\n    return a * b\n", "def test_add():\n    assert add(2, 3) == 5\n"
)


# -- code ------------------------------------------------------------------------------------


def test_correct_code_is_verified():
    v = verify_document(ADD_OK, FAST)
    assert v == Verdict(True, "ok", v.detail, "sandbox")
    assert "1 tests passed" in v.detail


def test_wrong_code_is_rejected_with_the_failing_assertion():
    v = verify_document(ADD_WRONG, FAST)
    assert v.verified is False
    assert v.reason == "tests_failed"
    assert "assert add(2, 3) == 5" in v.detail
    assert len(v.detail) <= 500


@pytest.mark.parametrize(
    ("solution", "tests", "reason"),
    [
        ("def f(:\n    pass\n", "assert f()\n", "syntax_error"),
        ("def f():\n    return 1\n", "def test_f(:\n", "syntax_error"),
        ("def f():\n    return 1\n", "", "no_tests"),
        ("def f():\n    return 1\n", "print(f())\n", "no_tests"),
        ("", "assert f()\n", "no_solution"),
        ("def f():\n    while True:\n        pass\n", "def test_f():\n    f()\n", "timeout"),
        ("def f():\n    print('y' * 10**6)\n", "def test_f():\n    f()\n", "output_limit"),
        ("def f():\n    return open('/etc/passwd').read()\n", "assert f()\n", "forbidden"),
        ("def f():\n    return bytearray(10**11)\n", "assert f()\n", "memory"),
        ("raise SystemExit(3)\n", "assert True\n", "crashed"),
    ],
    ids=[
        "syntax-solution",
        "syntax-tests",
        "empty-tests",
        "no-asserts",
        "no-solution",
        "timeout",
        "output",
        "forbidden",
        "memory",
        "crashed",
    ],
)
def test_every_code_failure_has_its_reason(solution, tests, reason):
    # only the looping solution meets the short limit; the others end by themselves
    settings = FAST.model_copy(update={"timeout_s": 1}) if reason == "timeout" else FAST
    v = verify_document(code_doc(solution, tests), settings)
    assert v.verified is False
    assert v.reason == reason
    assert v.detail


def test_tests_given_as_a_list_of_asserts():
    doc = code_doc("def add(a, b):\n    return a + b\n", "")
    doc["structured"]["tests"] = ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]
    assert verify_document(doc, FAST).verified is True
    doc["structured"]["tests"].append("assert add(1, 1) == 3")
    assert verify_document(doc, FAST).reason == "tests_failed"


def test_markdown_fences_around_code_are_tolerated():
    doc = code_doc(
        "```python\ndef add(a, b):\n    return a + b\n```",
        "```python\nassert add(1, 2) == 3\n```",
    )
    assert verify_document(doc, FAST).verified is True


# -- quantitative ------------------------------------------------------------------------------


def test_quantitative_answer_matching_the_worked_solution():
    doc = quant_doc(r"\frac{1}{2}", "Half of 1 is 1/2 = 0.5. So the answer is 0.5.")
    v = verify_document(doc, FAST)
    assert (v.verified, v.reason, v.checker) == (True, "ok", "sympy")


def test_quantitative_mismatch_is_rejected():
    doc = quant_doc("41", "We have 6 * 7 = 42.")
    v = verify_document(doc, FAST)
    assert (v.verified, v.reason) == (False, "answer_mismatch")
    assert "41" in v.detail and "42" in v.detail


def test_unparseable_final_answer_is_rejected():
    v = verify_document(quant_doc("about forty-ish", "6 * 7 = 42"), FAST)
    assert (v.verified, v.reason) == (False, "unparseable_answer")
    v = verify_document(quant_doc("", "6 * 7 = 42"), FAST)
    assert (v.verified, v.reason) == (False, "unparseable_answer")


def test_worked_solution_without_a_final_value_is_unchecked_not_rejected():
    v = verify_document(quant_doc("42", "Multiply six by seven, and you are done."), FAST)
    assert (v.verified, v.reason) == (None, "unchecked")
    assert "no final value" in v.detail


def test_second_sample_agreeing_verifies(fake_openai, tmp_path):
    fake_openai.responder = lambda body: "42"
    doc = quant_doc("42", "Multiply six by seven, and you are done.", problem="What is 6*7?")
    with engine_for(fake_openai, tmp_path / "cache") as llm:
        v = verify_document(doc, FAST, llm=llm)
    assert (v.verified, v.reason, v.checker) == (True, "ok", "sympy+second_sample")
    (body,) = fake_openai.requests
    assert body["messages"][-1] == {"role": "user", "content": "What is 6*7?"}
    assert "Multiply" not in str(body["messages"])  # the model never sees the worked solution
    assert body["temperature"] == FAST.second_sample_temperature


def test_second_sample_is_cached_across_runs(fake_openai, tmp_path):
    fake_openai.responder = lambda body: "42"
    doc = quant_doc("42", "Multiply six by seven.", problem="What is 6*7?")
    for _ in range(2):
        with engine_for(fake_openai, tmp_path / "cache") as llm:
            assert verify_document(doc, FAST, llm=llm).checker == "sympy+second_sample"
    assert fake_openai.count("chat") == 1


def test_second_sample_disagreeing_rejects_even_when_worked_solution_agrees(fake_openai, tmp_path):
    fake_openai.responder = lambda body: "The answer is 48."
    doc = quant_doc("42", "6 * 7 = 42", problem="What is 6*8?")
    with engine_for(fake_openai, tmp_path / "cache") as llm:
        v = verify_document(doc, FAST, llm=llm)
    assert (v.verified, v.reason, v.checker) == (False, "answer_mismatch", "sympy+second_sample")
    assert "second sample" in v.detail and "48" in v.detail


def test_second_sample_in_latex_matches_a_decimal_answer(fake_openai, tmp_path):
    fake_openai.responder = lambda body: r"$\boxed{\frac{3}{4}}$"
    with engine_for(fake_openai, tmp_path / "cache") as llm:
        v = verify_document(quant_doc("0.75", "3/4 = 0.75"), FAST, llm=llm)
    assert (v.verified, v.checker) == (True, "sympy+second_sample")


def test_failed_second_sample_falls_back_to_the_worked_solution(fake_openai, tmp_path):
    fake_openai.faults = lambda i, body: "500"
    with engine_for(fake_openai, tmp_path / "cache") as llm:
        v = verify_document(quant_doc("42", "6 * 7 = 42"), FAST, llm=llm)
    assert fake_openai.count("chat") >= 1
    assert (v.verified, v.checker) == (True, "sympy")
    assert "second sample gave no answer" in v.detail


def test_second_sample_can_be_turned_off(fake_openai, tmp_path):
    settings_off = FAST.model_copy(update={"second_sample": False})
    with engine_for(fake_openai, tmp_path / "cache") as llm:
        v = verify_document(quant_doc("42", "6 * 7 = 42"), settings_off, llm=llm)
    assert (v.verified, v.checker) == (True, "sympy")
    assert fake_openai.count("chat") == 0


def test_quantitative_checks_agree_in_the_pool_and_in_process():
    docs = [
        quant_doc("42", "6 * 7 = 42"),
        quant_doc("41", "6 * 7 = 42"),
        quant_doc("about forty-ish", "6 * 7 = 42"),
        quant_doc("2^(10^9)", "= 2^(10^9)"),
    ]
    in_process = FAST.model_copy(update={"sandbox_pool": False})
    pooled = [verify_document(d, FAST) for d in docs]
    assert pooled == [verify_document(d, in_process) for d in docs]
    assert [v.reason for v in pooled] == [
        "ok",
        "answer_mismatch",
        "unparseable_answer",
        "unparseable_answer",
    ]


# -- other kinds -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc",
    [
        {"kind": "exercise", "exercise_type": "conceptual", "structured": {"problem": "Why?"}},
        {"kind": "section", "text": "Prose."},
        {"kind": "exercise", "exercise_type": "code", "structured": "not a dict"},
    ],
)
def test_uncheckable_documents_are_none_with_a_reason(doc):
    v = verify_document(doc, FAST)
    assert v.verified is None and v.reason == "unchecked" and v.detail


def test_disabled_verification_checks_nothing():
    v = verify_document(ADD_WRONG, FAST.model_copy(update={"enabled": False}))
    assert (v.verified, v.reason) == (None, "unchecked")


# -- the record itself -------------------------------------------------------------------------


def test_a_failed_verdict_cannot_be_made_without_a_reason():
    with pytest.raises(ValueError):
        Verdict(False, None)
    with pytest.raises(ValueError):
        Verdict(False, "ok")
    with pytest.raises(ValueError):
        Verdict(True, "made-up")
    assert set(FAILURE_REASONS) < set(REASONS)


@settings(max_examples=150, deadline=None)
@given(
    final=st.one_of(st.none(), st.text(max_size=30), st.integers(), st.floats(allow_nan=True)),
    worked=st.one_of(st.none(), st.text(max_size=120)),
)
def test_quantitative_verdicts_always_carry_a_reason(final, worked):
    doc = quant_doc(final, worked)  # type: ignore[arg-type]
    v = verify_document(doc, FAST)
    assert v.reason in REASONS
    if v.verified is False:
        assert v.reason in FAILURE_REASONS and v.detail
    if v.verified is None:
        assert v.reason == "unchecked"


# -- batch -------------------------------------------------------------------------------------


def test_batch_keeps_input_order_and_verdicts_match_single_calls():
    slow_ok = code_doc(
        "import time\ndef add(a, b):\n    time.sleep(0.3)\n    return a + b\n",
        "assert add(1, 1) == 2\n",
        doc_id="slow",
    )
    docs = [slow_ok, ADD_WRONG, quant_doc("42", "6 * 7 = 42"), ADD_OK, {"kind": "section"}]
    out = list(verify_documents(docs, FAST, workers=2))
    assert [d is orig for (d, _v), orig in zip(out, docs, strict=True)] == [True] * 5
    assert [v.verified for _d, v in out] == [True, False, True, True, None]
    assert [v.reason for _d, v in out] == ["ok", "tests_failed", "ok", "ok", "unchecked"]


def test_batch_runs_as_many_checks_at_once_as_workers():
    """Counted, not timed: four blocking checks are all running at the same moment."""
    settings_ = FAST.model_copy(update={"timeout_s": 120})
    docs = [
        code_doc("import time\ndef f():\n    time.sleep(300)\n", "assert f()\n", doc_id=f"s{i}")
        for i in range(4)
    ]
    pool = sandbox_pools(settings_)["code"]
    out: list = []
    batch = threading.Thread(
        target=lambda: out.extend(verify_documents(docs, settings_, workers=4))
    )
    batch.start()
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while len(pool.running_checks()) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)  # polling for a state, not ordering events
        seen = set(pool.running_checks())
    finally:
        while batch.is_alive():  # end the sleeping checks, whatever the outcome
            for pid in pool.running_checks():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            batch.join(0.1)
    assert len(seen) == 4
    assert [d["id"] for d, _v in out] == ["s0", "s1", "s2", "s3"]
    assert all(v.verified is False for _d, v in out)


def test_one_worker_runs_one_check_at_a_time():
    """With workers=1 the batch never needs a second server."""
    docs = [
        code_doc("def f():\n    return 1\n", "assert f() == 1\n", doc_id=f"o{i}") for i in range(4)
    ]
    list(verify_documents(docs[:1], FAST, workers=1))  # at least one idle server exists
    pool = sandbox_pools(FAST)["code"]
    started = pool.started
    assert all(v.verified for _d, v in verify_documents(docs, FAST, workers=1))
    assert pool.started == started


def test_batch_sends_second_samples_together_and_matches_them_by_id(fake_openai, tmp_path):
    answers = {"What is 6*7?": "42", "What is 2+2?": "5"}
    fake_openai.responder = lambda body: answers[body["messages"][-1]["content"]]
    docs = [
        quant_doc("42", "Just multiply.", problem="What is 6*7?", doc_id="a"),
        ADD_OK,
        quant_doc("4", "2 + 2 = 4", problem="What is 2+2?", doc_id="b"),
    ]
    with engine_for(fake_openai, tmp_path / "cache") as llm:
        out = [v for _d, v in verify_documents(docs, FAST, llm=llm)]
    assert sorted(user_messages(fake_openai)) == ["What is 2+2?", "What is 6*7?"]
    assert (out[0].verified, out[0].checker) == (True, "sympy+second_sample")
    assert out[1].verified is True
    assert (out[2].verified, out[2].reason) == (False, "answer_mismatch")


def test_batch_accepts_a_lazy_iterable():
    def gen():
        for i in range(3):
            yield quant_doc(str(i), f"x = {i}", doc_id=str(i))

    assert [v.verified for _d, v in verify_documents(gen(), FAST)] == [True, True, True]
