"""Filters: every drop has a stage, a reason and a detail (scripted generation outputs)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from builder.errors import LLMError
from builder.filters import (
    EXTRA_COLUMNS,
    filter_documents,
    refusal_match,
    rejection_counts,
    repetition_ratio,
)
from builder.records import DOCUMENT_COLUMNS, REJECTION_COLUMNS
from builder.settings.filters import FilterSettings, VerifySettings
from builder.tokens import count_tokens_one as count_tokens
from tests.support.fake_openai_server import FakeOpenAIServer, FakeReply
from tests.support.generation import Generated, generate_rows

GOOD = """## Limits

A **limit** describes the value that a function approaches as its input gets closer and
closer to some point. Limits let us talk precisely about behaviour near a point, even when
the function is not defined at the point itself.

### Worked example

Consider f(x) = (x^2 - 1) / (x - 1). At x = 1 the formula divides by zero, so f(1) is not
defined. For every other x we can factor the numerator: (x - 1)(x + 1) / (x - 1) = x + 1.
As x approaches 1 from either side, x + 1 approaches 2, so the limit of f at 1 is 2.

### A common mistake

Students often think that a limit is the same as the value of the function at the point.
The example shows why this is wrong: the limit exists even though the value does not.
When you evaluate a limit, ask what happens near the point, never only at it.

### Summary

A limit captures the trend of a function near a point. Factoring and simplifying often
reveals it, and it can exist even where the function itself is undefined.
"""

FRENCH = (
    "Une limite décrit la valeur dont une fonction s'approche lorsque son argument se "
    "rapproche d'un point donné. Les limites permettent de parler précisément du "
    "comportement d'une fonction près d'un point, même lorsque la fonction n'est pas définie "
    "en ce point. Considérons par exemple la fonction qui à x associe le quotient de x au "
    "carré moins un par x moins un. En un, la formule divise par zéro, mais pour toutes les "
    "autres valeurs on peut simplifier et obtenir x plus un, dont la limite vaut deux. "
    "Une erreur fréquente consiste à croire que la limite est toujours égale à la valeur de "
    "la fonction au point considéré. L'exemple montre que ce n'est pas le cas : la limite "
    "existe alors même que la valeur n'existe pas. En résumé, la limite décrit la tendance "
    "de la fonction au voisinage du point, et non sa valeur en ce point."
)

LOOP = "The limit is the value. " * 80

EXERCISES = {
    "code": {
        "problem": "Write a function that adds two integers and returns the sum.",
        "signature": 'def add(a: int, b: int) -> int:\n    """Return a + b."""',
        "tests": "assert add(1, 2) == 3\nassert add(-1, 1) == 0\nassert add(0, 0) == 0",
        "solution": "def add(a: int, b: int) -> int:\n    return a + b",
    },
    "quantitative": {
        "problem": "A car travels 120 km in 2 hours. What is its average speed in km/h?",
        "worked_solution": "speed = distance / time\nspeed = 120 / 2\nspeed = 60",
        "final_answer": "60",
    },
    "conceptual": {
        "problem": "Why can a limit exist at a point where the function is undefined?",
        "answer": "A limit only looks at values near the point, never at the point itself.",
    },
}


TOPICS = {
    "limits": "Limits and continuity",
    "derivatives": "Derivatives",
    "integrals": "Integrals",
}


def generated(
    tmp_path: Path, reply, template: str = "section", n: int = 1, faults=None
) -> Generated:
    """Generate ``n`` documents of ``template`` with ``corpus generate`` (the build's generate
    stage, the real engine) against the fake server replying with ``reply`` (a text, a JSON
    object, a ``FakeReply`` or a responder of the request body) and injecting ``faults``.
    Each call has its own project, run directory and cache under ``tmp_path``."""
    responder = reply if callable(reply) else (lambda body: reply)
    with FakeOpenAIServer(responder=responder, faults=faults) as server:
        return generate_rows(
            Path(tempfile.mkdtemp(prefix=f"{template}-", dir=tmp_path)),
            server.base_url,
            dict(list(TOPICS.items())[:n]),
            templates=[template],
            llm={"max_attempts": 2, "backoff_base_s": 0.001, "backoff_max_s": 0.01},
        )


def rows_for(tmp_path: Path, reply, template: str = "section", n: int = 1, faults=None) -> list:
    """The rows of ``generated`` (the generation must succeed)."""
    gen = generated(tmp_path, reply, template, n, faults)
    assert gen.exit_code == 0, (gen.output, gen.error)
    assert len(gen.rows) == n
    return gen.rows


def _topic_of(body: dict) -> str:
    prompt = "\n".join(str(m.get("content")) for m in body["messages"])
    return next(name for name in TOPICS.values() if f'"{name}"' in prompt)


def run(rows, **overrides):
    settings = FilterSettings(**overrides)
    return filter_documents(rows, settings, VerifySettings(enabled=False))


def only_rejection(rows, **overrides) -> dict:
    kept, rejected = run(rows, **overrides)
    assert kept == [] and len(rejected) == 1
    return rejected[0]


# --------------------------------------------------------------------------- keep


def test_good_document_is_kept_with_its_columns(tmp_path: Path) -> None:
    kept, rejected = run(rows_for(tmp_path, GOOD))
    assert rejected == []
    (doc,) = kept
    assert list(doc)[: len(DOCUMENT_COLUMNS)] == list(DOCUMENT_COLUMNS)
    assert list(doc)[len(DOCUMENT_COLUMNS) :] == list(EXTRA_COLUMNS)
    # Every kept document carries its cl100k count (assembly takes it).
    assert doc["n_tokens"] == count_tokens(doc["text"]) >= 150
    assert doc["verified"] is None and doc["kind"] == "section"


# --------------------------------------------------------------------------- each reason


def test_truncated(tmp_path: Path) -> None:
    cut = FakeReply(GOOD[:300], finish_reason="length", completion_tokens=64)
    rows = rows_for(tmp_path, cut)
    rej = only_rejection(rows)
    assert (rej["stage"], rej["reason"]) == ("filter", "truncated")
    assert "64 tokens" in rej["detail"] and rej["text"] == GOOD[:300].strip()
    kept, _ = run(rows, drop_truncated=False, min_tokens=0)
    assert len(kept) == 1


@pytest.mark.parametrize(
    "reply",
    [
        "I'm sorry, but I can't help with that request.\n\n" + GOOD,
        "I cannot write this section because it may be harmful.\n" + GOOD,
        "As an AI language model, I am unable to create textbooks.\n" + GOOD,
        "Sorry, I am unable to comply with this request. " + GOOD,
        "Unfortunately, I can't produce that content.\n" + GOOD,
        "# Note\n\nI\u2019m sorry, but I won\u2019t write that. " + GOOD,
    ],
)
def test_refusals(tmp_path: Path, reply: str) -> None:
    rows = rows_for(tmp_path, reply)
    rej = only_rejection(rows)
    assert (rej["stage"], rej["reason"]) == ("filter", "refusal")
    assert rej["detail"].startswith("refusal phrase")
    kept, _ = run(rows, drop_refusals=False)
    assert len(kept) == 1


def test_refusal_patterns_do_not_flag_ordinary_text() -> None:
    assert refusal_match(GOOD) is None
    dialogue = "Teacher: What is a limit?\nStudent: I'm sorry, I don't know yet. " + GOOD
    assert refusal_match(dialogue) is None
    late = GOOD + "\nI'm sorry, but I can't say more."  # only the start is searched
    assert refusal_match(late) is None
    assert refusal_match("Our policy: we decline.", [r"\bwe decline\b"]) == "we decline"


def test_too_short_counts_cl100k_tokens(tmp_path: Path) -> None:
    short = "A limit is the value a function approaches near a point."
    rows = rows_for(tmp_path, short)
    rej = only_rejection(rows)
    assert (rej["stage"], rej["reason"]) == ("filter", "too_short")
    assert "< min_tokens 150" in rej["detail"]
    kept, _ = run(rows, min_tokens_by_kind={"section": 5})
    assert len(kept) == 1 and kept[0]["n_tokens"] == 12
    kept, _ = run(rows, min_tokens_by_kind={"section": 12})
    assert len(kept) == 1 and kept[0]["n_tokens"] == 12
    assert only_rejection(rows, min_tokens_by_kind={"section": 13})["reason"] == "too_short"


def test_few_words_many_tokens_are_counted_not_guessed(tmp_path: Path) -> None:
    """Fewer words than min_tokens does not mean too short: the text is then encoded."""
    dense = "".join(f"v{i}={i * 7};" for i in range(40)) + " Done."  # 2 words, >60 tokens
    rows = rows_for(tmp_path, dense)
    kept, rejected = run(rows, min_tokens_by_kind={"section": 60}, language=None)
    assert rejected == [] and kept[0]["n_tokens"] > 60


def test_repetition(tmp_path: Path) -> None:
    rows = rows_for(tmp_path, LOOP)
    rej = only_rejection(rows)
    assert (rej["stage"], rej["reason"]) == ("filter", "repetition")
    assert repetition_ratio(LOOP) > 0.9
    assert repetition_ratio(GOOD) < 0.1
    kept, _ = run(rows, max_repetition=1.0)
    assert len(kept) == 1


def test_wrong_language(tmp_path: Path) -> None:
    rows = rows_for(tmp_path, FRENCH)
    rej = only_rejection(rows)
    assert (rej["stage"], rej["reason"]) == ("filter", "wrong_language")
    assert rej["detail"].startswith("detected fr")
    assert len(run(rows, language=None)[0]) == 1
    assert len(run(rows, language="fr")[0]) == 1


def test_code_is_not_judged_as_prose(tmp_path: Path) -> None:
    # A section full of code: the prose is English, the code would confuse the language detector and
    # the repeated assert lines would look like a loop.
    code = "```python\n" + "assert f(1) == 1\n" * 60 + "```\n"
    rows = rows_for(tmp_path, GOOD + "\n" + code)
    kept, rejected = run(rows)
    assert rejected == [] and len(kept) == 1


def test_empty(tmp_path: Path) -> None:
    rej = only_rejection(rows_for(tmp_path, "   "))
    assert (rej["stage"], rej["reason"]) == ("filter", "empty")


def test_failed_requests_are_rejected_at_generate(tmp_path: Path) -> None:
    gen = generated(tmp_path, GOOD, faults=lambda i, body: "500")
    # Every request failed: the stage says so after saving the failures as rows.
    assert isinstance(gen.error, LLMError)
    assert "all 1 generation request(s) failed" in str(gen.error)
    rej = only_rejection(gen.rows)
    assert (rej["stage"], rej["reason"]) == ("generate", "failed")
    assert "500" in rej["detail"]
    assert list(rej)[:4] == list(REJECTION_COLUMNS)
    assert rej["status"] == "failed" and rej["template"] == "section"


def test_malformed_structured_output(tmp_path: Path) -> None:
    rows = rows_for(tmp_path, {"problem": "Add numbers."}, template="exercise_code")
    rej = only_rejection(rows)
    # The engine validates the reply against the template's schema (after a repair retry)
    assert (rej["stage"], rej["reason"]) == ("generate", "malformed")
    assert "'signature' is a required property" in rej["detail"]
    assert "repair retry" in rej["detail"]
    rows = rows_for(tmp_path, "not json at all", template="exercise_quantitative")
    rej = only_rejection(rows)
    assert (rej["stage"], rej["reason"]) == ("generate", "malformed")
    empty = {**EXERCISES["conceptual"], "answer": ""}
    rows = rows_for(tmp_path, empty, template="exercise_conceptual")
    assert only_rejection(rows)["detail"] == "empty field(s): answer"


def test_exercises_pass_with_a_per_kind_minimum(tmp_path: Path) -> None:
    rows = []
    for ex_type, template in (
        ("code", "exercise_code"),
        ("quantitative", "exercise_quantitative"),
        ("conceptual", "exercise_conceptual"),
    ):
        rows += rows_for(tmp_path, EXERCISES[ex_type], template=template)
    kept, rejected = run(rows, min_tokens_by_kind={"exercise": 20})
    assert rejected == [] and len(kept) == 3
    assert all(d["structured"] and d["exercise_type"] for d in kept)


def test_every_input_row_is_kept_or_rejected(tmp_path: Path) -> None:
    # One reply per topic (requests arrive in any order): good, a loop, French.
    replies = dict(zip(TOPICS.values(), [GOOD, LOOP, FRENCH], strict=True))
    rows = rows_for(tmp_path, lambda body: replies[_topic_of(body)], n=3)
    kept, rejected = run(rows)
    assert len(kept) + len(rejected) == 3
    assert rejection_counts(rejected) == {"filter/repetition": 1, "filter/wrong_language": 1}
    assert rows[0]["n_tokens"] is None  # input rows are not modified


def test_bad_refusal_pattern_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="not a regex"):
        FilterSettings(refusal_patterns=["(unclosed"])


# --------------------------------------------------------------------------- verification


def test_verification_marks_and_rejects(tmp_path: Path) -> None:
    """The real verifier runs each code exercise's tests in its sandbox: the right solution
    passes, the wrong one fails its first assert; a conceptual one has nothing to run."""
    wrong = {**EXERCISES["code"], "solution": "def add(a, b):\n    return a - b"}
    rows = rows_for(tmp_path, EXERCISES["code"], template="exercise_code")
    rows += rows_for(tmp_path, wrong, template="exercise_code")
    rows += rows_for(tmp_path, EXERCISES["conceptual"], template="exercise_conceptual")
    filters = FilterSettings(min_tokens=0)
    kept, rejected = filter_documents(rows, filters, VerifySettings())
    assert [d["verified"] for d in kept] == [True, None]
    (rej,) = rejected
    assert (rej["stage"], rej["reason"]) == ("verify", "tests_failed")
    assert "assert add(1, 2) == 3" in rej["detail"] and "AssertionError" in rej["detail"]
    assert rej["verified"] is False
    keep_all = VerifySettings(drop_unverified=False)
    kept, rejected = filter_documents(rows, filters, keep_all)
    assert rejected == [] and [d["verified"] for d in kept] == [True, False, None]
    off = VerifySettings(enabled=False)
    kept, _ = filter_documents(rows, filters, off)
    assert [d["verified"] for d in kept] == [None, None, None]


@given(
    st.lists(
        st.one_of(
            st.sampled_from(["loop", "Loop", "x_1", "42", "don't", "co-op", "Ünïcode", "K"]),
            st.text(max_size=6),
        ),
        max_size=40,
    ),
    st.integers(1, 4),
)
def test_repetition_ratio_counts_regex_words(parts: list[str], n: int) -> None:
    """The words are ``\\w+`` matches of the lowercased text, whether it is ASCII (a fast
    path) or not: the ratio equals one computed from ``re.findall``."""
    text = " ".join(parts)
    words = re.findall(r"\w+", text.lower())
    grams = set(zip(*(words[i:] for i in range(n)), strict=False))
    expected = 0.0 if len(words) < n else 1.0 - len(grams) / (len(words) - n + 1)
    assert repetition_ratio(text, n) == expected


# --------------------------------------------------------------------------- tables


def test_filter_table_equals_filter_documents(tmp_path: Path) -> None:
    """The filter stage's table path keeps and rejects the same rows, with the same values
    and order, as ``filter_documents`` over the rows as dicts: passing sections taken from
    the table (one with its tokens counted), rejections, structured exercises and verified
    code exercises (kept or rejected) interleaved."""
    import pyarrow as pa

    from builder.filters import filter_table
    from builder.records import DOCUMENT_SCHEMA, GENERATED_SCHEMA, to_table

    short = "A limit is the value a function approaches near a point."
    wrong = {**EXERCISES["code"], "solution": "def add(a, b):\n    return a - b"}
    rows = rows_for(tmp_path, GOOD)
    rows += rows_for(tmp_path, EXERCISES["code"], template="exercise_code")
    rows += rows_for(tmp_path, LOOP)
    rows += rows_for(tmp_path, short)
    rows += rows_for(tmp_path, wrong, template="exercise_code")
    rows += rows_for(tmp_path, GOOD.replace("limit", "boundary"))
    rows += rows_for(tmp_path, EXERCISES["conceptual"], template="exercise_conceptual")
    rows += rows_for(tmp_path, FRENCH)
    rows += rows_for(tmp_path, "I'm sorry, but I can't help with that request.\n\n" + GOOD)
    table = to_table(rows, GENERATED_SCHEMA)
    for filters, verify in [
        (FilterSettings(min_tokens=0, min_tokens_by_kind={"section": 12}), VerifySettings()),
        (FilterSettings(min_tokens=0), VerifySettings(enabled=False)),
        (FilterSettings(), VerifySettings(drop_unverified=False)),
    ]:
        kept, rejected = filter_documents(rows, filters, verify)
        got_kept, got_rejected = filter_table(table, filters, verify)
        assert isinstance(got_kept, pa.Table)
        assert got_kept.equals(to_table(kept, DOCUMENT_SCHEMA))
        assert got_rejected == rejected
        assert 0 < len(kept) < len(rows)
