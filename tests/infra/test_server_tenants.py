"""Multi-tenant basics (issue 12): several API keys, per-key rate and concurrency limits, request priority."""

import socket
import threading
import time

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

    keys = [APIKey("k-rate", "rated", rate=2), APIKey("k-one", "single", max_concurrency=1), APIKey("k-free", "free")]
    async_engine = AsyncEngine(LLMEngine(str(tiny_model_dir), **OPTIONS), poll_interval=0.2)
    app = build_app(async_engine, ServerSettings(served_model_name=MODEL, api_key="k-main", api_keys=keys))
    with ServerThread(app) as base_url:
        yield base_url, app


def post(base_url: str, key: str, **extra) -> httpx.Response:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, "temperature": 0, **extra}
    return httpx.post(base_url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                      timeout=60)


def test_every_key_opens_the_api_and_others_do_not(live):
    base_url, _ = live
    for key in ("k-main", "k-free", "k-one"):
        assert post(base_url, key).status_code == 200
    assert error_of(post(base_url, "k-unknown"), 401)["code"] == "invalid_api_key"


def test_rate_limit_is_429_with_retry_after(live):
    base_url, app = live
    assert [post(base_url, "k-rate").status_code for _ in range(2)] == [200, 200]
    refused = post(base_url, "k-rate")
    error = error_of(refused, 429)
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["Retry-After"]) <= 30, "2 a minute: the next one within half a minute"
    assert post(base_url, "k-free").status_code == 200, "one key's limit does not touch another"
    counted = app.state.metrics.registry.get_sample_value(
        "aios_http_requests_total", {"endpoint": "/v1/completions", "status": "429"})
    assert counted >= 1


def test_concurrency_limit_is_429_until_the_running_request_ends(live):
    base_url, _ = live
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as held:  # a request still sending its body
        held.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k-one\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        wait_for(lambda: post(base_url, "k-one").status_code == 429)
        refused = post(base_url, "k-one")
        assert error_of(refused, 429)["code"] == "rate_limit_exceeded"
        assert int(refused.headers["Retry-After"]) >= 1
        assert post(base_url, "k-free").status_code == 200
    wait_for(lambda: post(base_url, "k-one").status_code == 200)


def test_key_file_format(tmp_path):
    from aios.server.tenants import APIKey, KeyFileError, read_key_file

    path = tmp_path / "keys.txt"
    path.write_text("# team keys\nsk-a name=team-a rate=120 max-concurrency=8\n\nsk-b max-concurrency=2  # batch\nsk-c\n")
    assert read_key_file(path) == [APIKey("sk-a", "team-a", 120.0, 8), APIKey("sk-b", "key-4", None, 2),
                                   APIKey("sk-c", "key-5")]
    for bad in ("sk-x rate=fast", "sk-x max-concurrency=0", "sk-x colour=blue", "sk-x rate=-1", "sk-x rate=nan"):
        path.write_text(bad + "\n")
        with pytest.raises(KeyFileError, match="keys.txt:1"):
            read_key_file(path)


def test_key_ring_refills_at_the_rate():
    from aios.server.tenants import APIKey, KeyRing, LimitExceeded

    now = [0.0]
    key = APIKey("k", rate=60)  # one a second, a burst of 60
    ring = KeyRing([key], clock=lambda: now[0])
    for _ in range(60):
        ring.acquire(key)
        ring.release(key)
    with pytest.raises(LimitExceeded) as refused:
        ring.acquire(key)
    assert refused.value.retry_after == 1
    now[0] += 1.0
    ring.acquire(key)


# ---------------------------------------------------------------- priority


def test_priority_field_is_checked(live):
    base_url, _ = live
    assert post(base_url, "k-free", priority=-5).status_code == 200
    for bad in ("high", 1.5, 2**40, True):
        assert error_of(post(base_url, "k-free", priority=bad), 400)["param"] == "priority"


def test_high_priority_overtakes_a_queue_of_low_priority_requests(tiny_model_dir):
    """One sequence at a time: a priority -1 request added behind four priority 5 ones runs right after
    the one already running, and equal priorities keep their arrival order."""
    from aios.engine.llm_engine import LLMEngine
    from aios.sampling_params import SamplingParams

    engine = LLMEngine(str(tiny_model_dir), **{**OPTIONS, "max_num_seqs": 1})
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    low = [engine.add_request([1, 2, 3], params, priority=5) for _ in range(4)]
    engine.step()  # the first low one is running now
    high = engine.add_request([4, 5, 6], params, priority=-1)
    order = []
    while not engine.is_finished():
        finished, _ = engine.step()
        order += [seq.seq_id for seq in finished]
    assert order == [low[0].seq_id, high.seq_id] + [seq.seq_id for seq in low[1:]]


def wait_for(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("the server never got there")
        time.sleep(0.01)


def test_priority_through_the_server(tiny_model_dir):
    """The server passes ``priority`` to the scheduler: with one sequence at a time and three low-priority
    requests waiting, a high-priority one finishes before every waiting one."""
    from aios.engine.llm_engine import LLMEngine
    from aios.server.app import ServerSettings, build_app
    from aios.server.async_engine import AsyncEngine
    from aios.server.launcher import ServerThread

    engine = LLMEngine(str(tiny_model_dir), **{**OPTIONS, "max_num_seqs": 1})
    app = build_app(AsyncEngine(engine, poll_interval=0.2), ServerSettings(served_model_name=MODEL))
    finished = []

    def send(name: str, priority: int, max_tokens: int) -> None:
        response = post(base_url, "none", priority=priority, max_tokens=max_tokens, ignore_eos=True)
        assert response.status_code == 200, response.text
        finished.append(name)

    with ServerThread(app) as base_url:
        threads = [threading.Thread(target=send, args=("first", 5, 200))]
        threads[0].start()
        wait_for(lambda: engine.scheduler.running)
        threads += [threading.Thread(target=send, args=(f"low{i}", 5, 20)) for i in range(3)]
        for thread in threads[1:]:
            thread.start()
        wait_for(lambda: len(engine.scheduler.waiting) == 3)
        threads.append(threading.Thread(target=send, args=("high", -1, 20)))
        threads[-1].start()
        for thread in threads:
            thread.join(60)
    assert finished.index("high") < min(finished.index(f"low{i}") for i in range(3)), finished
