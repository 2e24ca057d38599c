"""The verification API the generation stage calls: verify_document / verify_documents."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.llm.fake import ScriptedLLM
from builder.records import ChatResult
from builder.settings.filters import VerifySettings
from builder.verify import (
    FAILURE_REASONS,
    REASONS,
    Verdict,
    verify_document,
    verify_documents,
)

FAST = VerifySettings(timeout_s=1.5, memory_mb=256, max_output_kb=16)


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
    v = verify_document(code_doc(solution, tests), FAST.model_copy(update={"timeout_s": 1}))
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


def test_second_sample_agreeing_verifies():
    llm = ScriptedLLM(["42"])
    doc = quant_doc("42", "Multiply six by seven, and you are done.", problem="What is 6*7?")
    v = verify_document(doc, FAST, llm=llm)
    assert (v.verified, v.reason, v.checker) == (True, "ok", "sympy+second_sample")
    (request,) = llm.calls
    assert request.messages[-1]["content"] == "What is 6*7?"
    assert "42" not in str(request.messages)  # the model never sees the worked answer
    assert request.params["temperature"] == FAST.second_sample_temperature


def test_second_sample_disagreeing_rejects_even_when_worked_solution_agrees():
    llm = ScriptedLLM(["The answer is 48."])
    doc = quant_doc("42", "6 * 7 = 42", problem="What is 6*8?")
    v = verify_document(doc, FAST, llm=llm)
    assert (v.verified, v.reason, v.checker) == (False, "answer_mismatch", "sympy+second_sample")
    assert "second sample" in v.detail and "48" in v.detail


def test_second_sample_in_latex_matches_a_decimal_answer():
    llm = ScriptedLLM([r"$\boxed{\frac{3}{4}}$"])
    v = verify_document(quant_doc("0.75", "3/4 = 0.75"), FAST, llm=llm)
    assert v.verified is True


def test_failed_second_sample_falls_back_to_the_worked_solution():
    failure = ChatResult(request_id="x", status="failed", error="server down")
    llm = ScriptedLLM([failure])
    v = verify_document(quant_doc("42", "6 * 7 = 42"), FAST, llm=llm)
    assert (v.verified, v.checker) == (True, "sympy")
    assert "second sample gave no answer" in v.detail


def test_second_sample_can_be_turned_off():
    llm = ScriptedLLM([])
    settings_off = FAST.model_copy(update={"second_sample": False})
    v = verify_document(quant_doc("42", "6 * 7 = 42"), settings_off, llm=llm)
    assert v.verified is True and llm.calls == []


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


def test_batch_runs_sandboxes_in_parallel():
    docs = [
        code_doc(
            "import time\ndef f():\n    time.sleep(0.4)\n    return 1\n",
            "assert f() == 1\n",
            doc_id=f"s{i}",
        )
        for i in range(4)
    ]
    t0 = time.perf_counter()
    serial = list(verify_documents(docs, FAST, workers=1))
    t1 = time.perf_counter()
    parallel = list(verify_documents(docs, FAST, workers=4))
    t2 = time.perf_counter()
    assert all(v.verified for _d, v in serial + parallel)
    # Same run, same machine: four sleeping sandboxes at once take well under the serial time.
    assert (t2 - t1) < 0.75 * (t1 - t0)


def test_batch_sends_second_samples_together_and_matches_them_by_id():
    seen = []

    def reply(request):
        seen.append(request.id)
        return {"What is 6*7?": "42", "What is 2+2?": "5"}[request.messages[-1]["content"]]

    llm = ScriptedLLM(reply)
    docs = [
        quant_doc("42", "Just multiply.", problem="What is 6*7?", doc_id="a"),
        ADD_OK,
        quant_doc("4", "2 + 2 = 4", problem="What is 2+2?", doc_id="b"),
    ]
    out = [v for _d, v in verify_documents(docs, FAST, llm=llm)]
    assert seen == ["verify:a:second-sample", "verify:b:second-sample"]
    assert (out[0].verified, out[0].checker) == (True, "sympy+second_sample")
    assert out[1].verified is True
    assert (out[2].verified, out[2].reason) == (False, "answer_mismatch")


def test_batch_accepts_a_lazy_iterable():
    def gen():
        for i in range(3):
            yield quant_doc(str(i), f"x = {i}", doc_id=str(i))

    assert [v.verified for _d, v in verify_documents(gen(), FAST)] == [True, True, True]
