"""The server's plumbing (no lesson stubs it): errors in OpenAI's shape, auth, limits, health, metrics,
models, and surviving a failing engine. Runs a real server on a free loopback port with the tiny model."""

import json
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aios.config import features_up_to

API_KEY = "sk-test-key"
MODEL = "tiny"
OPTIONS = {**features_up_to(15), "attention_backend": "auto", "num_kvcache_blocks": 64, "max_model_len": 256}


@pytest.fixture(scope="module")
def live(tiny_model_dir):
    from aios.engine.llm_engine import LLMEngine
    from aios.server.app import ServerSettings, build_app
    from aios.server.async_engine import AsyncEngine
    from aios.server.launcher import ServerThread

    async_engine = AsyncEngine(LLMEngine(str(tiny_model_dir), **OPTIONS), poll_interval=0.2)
    settings = ServerSettings(served_model_name=MODEL, api_key=API_KEY, max_body_bytes=2048, max_tokens_limit=64)
    app = build_app(async_engine, settings)
    with ServerThread(app) as base_url:
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as http:
            yield base_url, http, app


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def ok_completion(http) -> dict:
    response = http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 3, "temperature": 0})
    assert response.status_code == 200, response.text
    return response.json()


def test_malformed_json_is_400(live):
    _, http, _ = live
    error = error_of(http.post("/v1/completions", content=b'{"model": "tiny", "prompt": ',
                               headers={"Content-Type": "application/json"}), 400)
    assert error["code"] == "invalid_json"
    error_of(http.post("/v1/completions", json=["not", "an", "object"]), 400)
    ok_completion(http)


def test_unknown_model_is_404(live):
    _, http, _ = live
    error = error_of(http.post("/v1/completions", json={"model": "gpt-9", "prompt": "hi"}), 404)
    assert error["param"] == "model" and error["code"] == "model_not_found"
    error_of(http.get("/v1/models/gpt-9"), 404)
    assert http.get(f"/v1/models/{MODEL}").json()["id"] == MODEL


@pytest.mark.parametrize("extra,param", [({"n": 2}, "n"), ({"stop": ["\n"]}, "stop"), ({"logprobs": 3}, "logprobs"),
                                         ({"echo": True}, "echo"), ({"frequency_penalty": 0.5}, "frequency_penalty"),
                                         ({"bogus_field": 1}, "bogus_field")])
def test_unsupported_and_unknown_fields_are_named(live, extra, param):
    _, http, _ = live
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, **extra}
    error = error_of(http.post("/v1/completions", json=body), 400)
    assert error["param"] == param and param in error["message"]


def test_fields_at_their_off_value_are_accepted(live):
    _, http, _ = live
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, "temperature": 0, "n": 1, "stop": None,
            "logprobs": None, "presence_penalty": 0, "user": "someone"}
    assert http.post("/v1/completions", json=body).status_code == 200
    chat = {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "max_completion_tokens": 2, "temperature": 0, "logprobs": False, "response_format": {"type": "text"}}
    response = http.post("/v1/chat/completions", json=chat)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("body,param", [
    ({"model": MODEL}, "prompt"),
    ({"model": MODEL, "prompt": []}, "prompt"),
    ({"model": MODEL, "prompt": [[]]}, "prompt"),
    ({"model": MODEL, "prompt": "hi", "stream": "yes"}, "stream"),
    ({"model": MODEL, "prompt": "hi", "stream_options": {"include_usage": True}}, "stream_options"),
    ({"prompt": "hi"}, "model"),
    ({"model": MODEL, "prompt": [1, 2, 10**9]}, "prompt"),
    ({"model": MODEL, "prompt": [[1]] * 257}, "prompt"),
])
def test_bad_completion_bodies_are_400(live, body, param):
    _, http, _ = live
    assert error_of(http.post("/v1/completions", json=body), 400)["param"] == param


@pytest.mark.parametrize("messages", [[], "hi", [{"content": "no role"}], [{"role": "wizard", "content": "x"}],
                                      [{"role": "user", "content": 5}]])
def test_bad_chat_messages_are_400(live, messages):
    _, http, _ = live
    body = {"model": MODEL, "messages": messages, "max_tokens": 2}
    assert error_of(http.post("/v1/chat/completions", json=body), 400)["param"] == "messages"


def test_body_size_limit_is_413(live):
    _, http, _ = live
    error = error_of(http.post("/v1/completions", json={"model": MODEL, "prompt": "x" * 5000}), 413)
    assert error["code"] == "request_too_large"
    ok_completion(http)


def test_api_key_is_required_on_v1(live):
    base_url, http, _ = live
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
    error = error_of(httpx.post(base_url + "/v1/completions", json=body), 401)
    assert error["type"] == "authentication_error"
    error_of(httpx.post(base_url + "/v1/completions", json=body, headers={"Authorization": "Bearer wrong"}), 401)
    error_of(httpx.get(base_url + "/v1/models", headers={"Authorization": API_KEY}), 401)
    with openai.OpenAI(base_url=base_url + "/v1", api_key="wrong", max_retries=0, timeout=30) as client:
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
    with openai.OpenAI(base_url=base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=30) as client:
        assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(base_url + "/health").status_code == 200, "/health needs no key"
    assert httpx.get(base_url + "/metrics").status_code == 200, "/metrics needs no key"


def test_unknown_route_is_json_404(live):
    _, http, _ = live
    assert error_of(http.get("/v1/nothing-here"), 404)["type"] == "not_found_error"
    assert http.get("/v1/completions").status_code == 405


def test_models_lists_the_served_model(live):
    _, http, _ = live
    data = http.get("/v1/models").json()
    assert data["object"] == "list"
    assert [(m["id"], m["object"], m["max_model_len"]) for m in data["data"]] == [(MODEL, "model", 256)]


def samples(http) -> dict:
    families = text_string_to_metric_families(http.get("/metrics").text)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_metrics_count_requests_and_tokens(live):
    _, http, app = live
    before = samples(http)
    completion = ok_completion(http)
    stream = http.post("/v1/completions", json={"model": MODEL, "prompt": "hello", "max_tokens": 4, "temperature": 0,
                                                "stream": True, "ignore_eos": True})
    assert stream.text.rstrip().endswith("data: [DONE]")
    after = samples(http)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("aios_http_requests_total", endpoint="/v1/completions", status="200") == 2
    assert delta("aios_generation_tokens_total") == completion["usage"]["completion_tokens"] + 4
    prompt_tokens = len(app.state.async_engine.engine.tokenizer.encode("hello"))
    assert delta("aios_prompt_tokens_total") == completion["usage"]["prompt_tokens"] + prompt_tokens
    assert delta("aios_time_to_first_token_seconds_count") == 2
    assert delta("aios_inter_token_latency_seconds_count") >= 3
    assert delta("aios_requests_finished_total", finish_reason="length") + \
        delta("aios_requests_finished_total", finish_reason="stop") == 2
    for gauge in ("aios_num_requests_running", "aios_num_requests_waiting", "aios_kv_cache_usage_ratio"):
        assert (gauge, ()) in after
    assert after[("aios_kv_cache_usage_ratio", ())] == 0.0, "an idle server holds no KV blocks"


def test_engine_failure_is_500_and_server_recovers(live, monkeypatch):
    base_url, http, app = live
    engine = app.state.async_engine.engine
    runner = engine.model_runner
    original = runner.run
    calls = {"n": 0}

    def fail_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated CUDA error")
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "run", fail_once)
    error = error_of(http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 3}), 500)
    assert "simulated CUDA error" in error["message"]
    ok_completion(http)
    health = http.get("/health").json()
    assert health["status"] == "ok" and health["engine_errors"] >= 1
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_engine_failure_mid_stream_sends_error_event(live, monkeypatch):
    _, http, app = live
    runner = app.state.async_engine.engine.model_runner
    original = runner.run
    calls = {"n": 0}

    def fail_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom in decode")
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "run", fail_third)
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 20, "temperature": 0, "stream": True, "ignore_eos": True}
    response = http.post("/v1/completions", json=body)
    events = [line[len("data: "):] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "boom in decode" in json.loads(events[-2])["error"]["message"]
    monkeypatch.setattr(runner, "run", original)
    ok_completion(http)


def test_persistent_engine_failure_turns_health_503(live, monkeypatch):
    base_url, http, app = live
    async_engine = app.state.async_engine
    runner = async_engine.engine.model_runner
    original = runner.run

    def always_fail(*args, **kwargs):
        raise RuntimeError("device lost")

    monkeypatch.setattr(runner, "run", always_fail)
    for _ in range(async_engine.unhealthy_after):
        error_of(http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2}), 500)
    health = http.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "unhealthy"
    assert "device lost" in health.json()["last_error"]
    monkeypatch.setattr(runner, "run", original)
    ok_completion(http)
    assert http.get("/health").status_code == 200


def test_engine_loop_keeps_running_after_all_this(live):
    _, http, app = live
    assert app.state.async_engine.is_running
    deadline = time.monotonic() + 10
    while app.state.async_engine.num_active_requests and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.state.async_engine.num_active_requests == 0
