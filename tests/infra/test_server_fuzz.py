"""API fuzzing (issue 12): requests generated from the server's own OpenAPI document, plus hostile values.

The property, for every generated request: no 5xx; every 4xx carries OpenAI's error object;
a 200 is a well-formed answer; and a well-formed request sent right after still succeeds.

Bodies come from the request schemas the server publishes at /openapi.json (through
hypothesis-jsonschema), from those bodies with one field replaced by a hostile JSON value
(huge or overlong numbers, NaN/Infinity, surrogates, deep nesting, wrong types), and from
raw bytes. The app runs in this process (FastAPI's TestClient) with the tiny model.

CI runs AIOS_FUZZ_EXAMPLES=40 examples per test (the default); ``nox -s fuzz-server``
runs many more.
"""

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from aios.config import features_up_to

MODEL = "tiny"
OPTIONS = {**features_up_to(15), "attention_backend": "auto", "num_kvcache_blocks": 64, "max_model_len": 128}
MAX_BODY_BYTES = 64 * 1024
FUZZ = settings(max_examples=int(os.environ.get("AIOS_FUZZ_EXAMPLES", "40")), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
PATHS = ("/v1/completions", "/v1/chat/completions")


@pytest.fixture(scope="module")
def client(tiny_model_dir):
    from fastapi.testclient import TestClient

    from aios.engine.llm_engine import LLMEngine
    from aios.server.app import ServerSettings, build_app
    from aios.server.async_engine import AsyncEngine

    async_engine = AsyncEngine(LLMEngine(str(tiny_model_dir), **OPTIONS), poll_interval=0.2)
    settings_ = ServerSettings(served_model_name=MODEL, max_tokens_limit=4, max_body_bytes=MAX_BODY_BYTES)
    with TestClient(build_app(async_engine, settings_), base_url="http://127.0.0.1") as test_client:
        yield test_client


@pytest.fixture(scope="module")
def schemas(client) -> dict:
    """The request-body schema of each generation endpoint, from the server's OpenAPI document."""
    document = client.get("/openapi.json").json()
    return {path: document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
            for path in PATHS}


def check_answer(client, response) -> None:
    """The property: no 5xx, the error object on every 4xx, well-formed 200s; the server still serves."""
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    elif response.headers["content-type"].startswith("text/event-stream"):
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and all("choices" in json.loads(e) for e in events[:-1]), events
    else:
        assert response.json()["choices"], response.text
    after = client.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1})
    assert after.status_code == 200, after.text


def post(client, path: str, content: bytes):
    return client.post(path, content=content, headers={"Content-Type": "application/json"})


@st.composite
def schema_bodies(draw, schemas):
    """(path, body) valid against the published schema, the model often set to the served one."""
    path = draw(st.sampled_from(PATHS))
    body = draw(from_schema(schemas[path]))
    if draw(st.booleans()):
        body["model"] = MODEL
    return path, body


@given(data=st.data())
@FUZZ
def test_schema_generated_requests(client, schemas, data):
    path, body = data.draw(schema_bodies(schemas))
    check_answer(client, post(client, path, json.dumps(body).encode()))


#: JSON texts no well-behaved client sends; each replaces one field of a valid body.
HOSTILE_VALUES = [
    "1" + "0" * 400, "-" + "9" * 5000, "1e400", "-1e400", "1e-400", "NaN", "Infinity", "-Infinity",
    str(2**63), str(-(2**63) - 1), str(2**64), "-1", "0", "1.5", "true", "null", "{}", "[]", '""',
    '"\\ud800"', '"a\\udfff b"', '{"\\udc00": 1}', '["\\ud83d"]', "[" * 3000 + "]" * 3000,
    '{"a":' * 50 + "1" + "}" * 50, '"' + "x" * 20000 + '"', "[" + ",".join(["1"] * 5000) + "]",
    '[{"role": "user", "content": "\\ud800"}]', '[{"role": "user", "content": [{"type": "text", "text": 5}]}]',
    '[[1, 2, -3]]', "[1e400]", '{"include_usage": "yes"}',
]
FIELDS = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
          "seed", "stream", "stream_options", "ignore_eos", "user", "priority", "n", "stop", "logit_bias",
          "\\ud800", "x" * 300]
VALID = {"/v1/completions": {"model": '"tiny"', "prompt": '"hi"', "max_tokens": "2"},
         "/v1/chat/completions": {"model": '"tiny"', "messages": '[{"role": "user", "content": "hi"}]',
                                  "max_tokens": "2"}}


@given(path=st.sampled_from(PATHS), field=st.sampled_from(FIELDS), value=st.sampled_from(HOSTILE_VALUES),
       stream=st.booleans())
@FUZZ
def test_one_hostile_field(client, path, field, value, stream):
    fields = {**VALID[path], field: value}
    if stream and field != "stream":
        fields["stream"] = "true"
    text = "{" + ",".join(f'"{name}":{raw}' for name, raw in fields.items()) + "}"
    check_answer(client, post(client, path, text.encode("utf-8", "surrogatepass")))


@given(path=st.sampled_from(PATHS), content=st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.integers(0, 60).map(lambda n: '{"model": "tiny", "prompt": "hello", "max_tokens": 2}'[:n].encode()),
    st.just(b'{"model": "tiny", "prompt": "' + b"x" * (MAX_BODY_BYTES + 1) + b'"}'),
))
@FUZZ
def test_raw_bodies(client, path, content):
    check_answer(client, post(client, path, content))
