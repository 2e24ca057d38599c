"""What the engine sends and the keys it caches under do not change when a request is
prepared another way: ``encode_body`` gives the bytes of ``json.dumps`` and
``canonical_json``; keys of fixed requests equal the ones earlier builders stored (a changed
key would lose every existing cache); a ``PreparedRequest`` is trusted only under the
engine's own ``prepare_signature``."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from builder.generate_ahead import prepare_plan
from builder.llm import open_engine
from builder.llm.endpoint import (
    Endpoint,
    PreparedRequest,
    encode_body,
    prepare,
    prepare_signature,
)
from builder.records import ChatRequest, canonical_json
from builder.settings.llm import LLMSettings
from tests.support.fake_openai_server import FakeOpenAIServer

SCHEMA = {
    "title": "Answer",
    "type": "object",
    "properties": {"problem": {"type": "string"}, "final_answer": {"type": "string"}},
    "required": ["problem", "final_answer"],
    "additionalProperties": False,
}
ENDPOINTS = [
    Endpoint(base_url="http://h:1/v1", model="m"),
    Endpoint(base_url="http://g:2/v1", model="llama", kind="llama.cpp"),
]
REQUESTS = [
    ChatRequest(
        id="a",
        messages=(
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": 'Explain \u00e9nergie "quoted"\n\ttabs \u2014 and \\ slashes',
            },
        ),
        params={"temperature": 0.3, "seed": 7},
        sample_index=2,
    ),
    ChatRequest(id="b", messages=({"content": "order reversed", "role": "user"},), schema=SCHEMA),
    ChatRequest(
        id="c",
        messages=({"role": "user", "content": "named", "name": "x"},),
        params={"max_completion_tokens": 50},
    ),
]
# Computed by the builder before messages were escaped once for both forms (commit 685898f).
GOLDEN_KEYS = {
    "a": [
        "119f97d2a4deb8b2696920730c7a54316a634e32f6c3180851c3688c8a3e8ac3",
        "bbfe2bc4ef0bc3bdffa46d2b0aeb7f6a456d4809b6063d0dbc416f8fa4add0e6",
    ],
    "b": [
        "15048e23103c02383b214850f207d5c1dd594e97ffefa8c60716bfbcc77485fc",
        "25a9dd8a2ec549e8dc1792e1285fd6e549cba2b79fa6dcff27273f0ed55c94ac",
    ],
    "c": [
        "e3832938ac551dce4f281fe1bb2a2bd95d21f4d03b36da7b20d767642241f4ae",
        "389e2d87b16e96242b1d1756b288e97a46a4655d92092adf92cb25f9308e5125",
    ],
}


def _dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str)


def test_cache_keys_of_known_requests_are_unchanged() -> None:
    for request in REQUESTS:
        prep = prepare(ENDPOINTS, request, LLMSettings())
        assert prep.keys == GOLDEN_KEYS[request.id], request.id


def test_sent_body_keeps_the_order_built_and_the_key_hashes_the_sorted_form() -> None:
    prep = prepare(ENDPOINTS, REQUESTS[1], LLMSettings())
    body = json.loads(prep.bodies[0])
    assert prep.bodies[0] == _dumps(body)
    assert list(body["response_format"]["json_schema"]["schema"]["properties"]) == [
        "problem",
        "final_answer",
    ]
    assert prep.bodies[0].index('"role"') > prep.bodies[0].index('"content"')


text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["\x00messages\x00", '"\\u0000messages\\u0000"', "messages"]
)
scalar = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text
message = st.fixed_dictionaries({"role": text, "content": text}) | st.dictionaries(
    text, scalar | st.lists(scalar, max_size=3), max_size=4
)
extra = st.dictionaries(text, scalar | st.dictionaries(text, scalar, max_size=3), max_size=5)


@given(
    messages=st.lists(message, max_size=4) | scalar,
    before=extra,
    after=extra,
    role_last=st.booleans(),
)
def test_encode_body_is_json_dumps_and_canonical_json(messages, before, after, role_last) -> None:
    if role_last and isinstance(messages, list):
        messages = [{k: m[k] for k in reversed(list(m))} for m in messages]
    body = {**before, "messages": messages, **after}
    assert encode_body(body) == (_dumps(body), canonical_json(body))


def _settings(srv: FakeOpenAIServer) -> LLMSettings:
    return LLMSettings(base_url=srv.base_url, model="fake-model", max_concurrency=4)


def test_a_prepared_request_is_sent_as_prepared_under_the_engines_signature(tmp_path) -> None:
    with (
        FakeOpenAIServer() as srv,
        open_engine(_settings(srv), cache_dir=tmp_path, progress=False) as engine,
    ):
        plain = REQUESTS[0]
        [ahead] = prepare_plan([plain], engine.endpoints, engine.settings, engine.model_name)
        assert isinstance(ahead, PreparedRequest)
        assert ahead.signature == prepare_signature(engine.endpoints, engine.settings)
        [result] = engine.run([ahead])
        assert result.status == "ok"
        assert result.request_sha256 == ahead.keys[0] == engine.request_sha256(plain)
        assert srv.requests[-1]["messages"] == list(plain.messages)


def test_a_prepared_request_of_another_signature_is_prepared_again(tmp_path) -> None:
    plain = REQUESTS[0]
    with (
        FakeOpenAIServer() as srv,
        open_engine(_settings(srv), cache_dir=tmp_path, progress=False) as engine,
    ):
        stale = PreparedRequest(
            id=plain.id,
            messages=plain.messages,
            params=plain.params,
            sample_index=plain.sample_index,
            bodies=('{"model":"other","messages":[]}',),
            keys=("0" * 64,),
            signature="made for another endpoint",
        )
        [result] = engine.run([stale])
        assert result.status == "ok"
        assert result.request_sha256 == engine.request_sha256(plain) != "0" * 64
        sent = srv.requests[-1]
        assert sent["model"] == "fake-model"
        assert sent["messages"] == list(plain.messages)
