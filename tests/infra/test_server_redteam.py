"""Red-team findings about tenants: a request with several prompts runs one sequence per prompt,
so a key's limits count its prompts, not its HTTP requests (else one request of 256 prompts
walks past ``max-concurrency=2`` and a rate of 4 a minute)."""

import json
import socket

import httpx
import pytest
from test_server_api import error_of

from aios.config import features_up_to

MODEL = "tiny"
OPTIONS = {**features_up_to(15), "attention_backend": "auto", "num_kvcache_blocks": 128, "max_model_len": 256}


@pytest.fixture(scope="module")
def live(tiny_model_dir):
    from aios.engine.llm_engine import LLMEngine
    from aios.server.app import ServerSettings, build_app
    from aios.server.async_engine import AsyncEngine
    from aios.server.launcher import ServerThread
    from aios.server.tenants import APIKey

    keys = [APIKey("k-two", "two", max_concurrency=2), APIKey("k-rate", "rated", rate=4)]
    async_engine = AsyncEngine(LLMEngine(str(tiny_model_dir), **OPTIONS), poll_interval=0.2)
    app = build_app(async_engine, ServerSettings(served_model_name=MODEL, api_keys=keys))
    with ServerThread(app) as base_url:
        yield base_url


def post(base_url: str, key: str, prompts: int, **extra) -> httpx.Response:
    body = {"model": MODEL, "prompt": ["hi"] * prompts, "max_tokens": 2, "temperature": 0, **extra}
    return httpx.post(base_url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                      timeout=60)


def test_prompts_count_against_the_keys_concurrency(live):
    base_url = live
    error = error_of(post(base_url, "k-two", 3), 400)
    assert error["param"] == "prompt" and "2" in error["message"], "3 prompts can never run under a limit of 2"
    host, port = base_url.removeprefix("http://").split(":")
    body = json.dumps({"model": MODEL, "prompt": "a long one", "max_tokens": 200, "ignore_eos": True,
                       "stream": True}).encode()
    with socket.create_connection((host, int(port)), timeout=30) as running:  # one prompt in flight
        running.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k-two\r\n"
                        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        assert running.recv(100).startswith(b"HTTP/1.1 200")
        refused = post(base_url, "k-two", 2)
        assert error_of(refused, 429)["code"] == "rate_limit_exceeded" and refused.headers["Retry-After"]
        assert post(base_url, "k-two", 1).status_code == 200, "one more prompt still fits"
    for _ in range(100):  # the closed stream is aborted and releases its slot
        response = post(base_url, "k-two", 2)
        if response.status_code == 200:
            break
    assert response.status_code == 200 and len(response.json()["choices"]) == 2


def test_prompts_count_against_the_keys_rate(live):
    base_url = live
    assert error_of(post(base_url, "k-rate", 5), 400)["param"] == "prompt", "5 prompts never fit 4 a minute"
    assert post(base_url, "k-rate", 3).status_code == 200, "the refused request counted once: 3 left"
    refused = post(base_url, "k-rate", 1)
    assert error_of(refused, 429)["code"] == "rate_limit_exceeded" and int(refused.headers["Retry-After"]) >= 1
