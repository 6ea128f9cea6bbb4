"""Graceful drain (issue 12, finding 3): SIGTERM with requests in flight.

``aios serve`` in a real subprocess on loopback: after SIGTERM the running requests get
``--shutdown-timeout`` seconds; those still running then end cleanly (a stream: an error
event, then ``data: [DONE]``; a plain request: a JSON error), one log line each, no
traceback, exit status 0, and no process of the server's group left (tensor-parallel
workers included).
"""

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from test_server_api import error_of
from test_server_cli import kill_group
from test_server_cli import start_server as serve_process

KEY = "k-drain"


def start_server(model_dir, log_path, *extra) -> tuple[subprocess.Popen, str]:
    """The shared launcher with this file's model name and cache sizes."""
    return serve_process(model_dir, log_path, "--served-model-name", "tiny", "--max-model-len", "1024",
                         "--num-kvcache-blocks", "1024", *extra)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, read from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def wait_group_gone(pgid: int, timeout: float = 20) -> list[int]:
    deadline = time.monotonic() + timeout
    while (members := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return members


class Client(threading.Thread):
    """One request in a thread: a stream (collects its SSE data lines) or a plain request (its response)."""

    def __init__(self, base_url: str, body: dict, api_key: str = KEY):
        super().__init__(daemon=True)
        self.base_url, self.body, self.api_key = base_url, body, api_key
        self.events: list[str] = []
        self.response: httpx.Response | None = None
        self.started_streaming = threading.Event()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=120) as http:
            if not self.body.get("stream"):
                self.response = http.post("/v1/completions", json=self.body)
                return
            with http.stream("POST", "/v1/completions", json=self.body) as response:
                self.response = response
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line[len("data: "):])
                        self.started_streaming.set()


def body(max_tokens: int, stream: bool) -> dict:
    return {"model": "tiny", "prompt": "Once upon a time", "max_tokens": max_tokens, "ignore_eos": True,
            "temperature": 0.8, "stream": stream}


def wait_running(base_url: str, count: int) -> None:
    """Until the engine runs ``count`` requests (read from /metrics)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in httpx.get(base_url + "/metrics", timeout=10).text.splitlines():
            if line.startswith("aios_num_requests_running ") and float(line.split()[1]) >= count:
                return
        time.sleep(0.05)
    pytest.fail(f"{count} requests never ran at once")


def test_sigterm_ends_long_requests_cleanly(tiny_model_dir, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# clients\n{KEY} name=drain-test max-concurrency=16\n")
    log = tmp_path / "serve.log"
    process, base_url = start_server(tiny_model_dir, log, "--shutdown-timeout", "1", "--tensor-parallel-size", "2",
                                     "--api-key", "k-other", "--api-key-file", str(keys))
    try:
        streams = [Client(base_url, body(1000, stream=True)) for _ in range(4)]
        plain = [Client(base_url, body(1000, stream=False)) for _ in range(2)]
        for client in streams + plain:
            client.start()
        for client in streams:
            assert client.started_streaming.wait(60), "a stream never started"
        wait_running(base_url, 6)
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()
        assert not wait_group_gone(process.pid), "a process of the server (a tensor-parallel worker?) outlived it"
        for client in streams + plain:
            client.join(30)
    finally:
        kill_group(process)
    for client in streams:
        assert client.events[-1] == "[DONE]", client.events[-3:]
        error = json.loads(client.events[-2])["error"]
        assert error["code"] == "server_shutting_down" and error["type"] == "service_unavailable"
    for client in plain:
        assert error_of(client.response, 503)["code"] == "server_shutting_down"
    text = log.read_text()
    assert "Traceback" not in text and "CancelledError" not in text, text
    aborted = [line for line in text.splitlines() if "aborted" in line]
    assert len(aborted) == 6, text


def test_sigterm_lets_requests_within_the_grace_period_finish(tiny_model_dir, tmp_path):
    log = tmp_path / "serve.log"
    process, base_url = start_server(tiny_model_dir, log, "--shutdown-timeout", "120", "--api-key", "k-first",
                                     "--api-key", KEY)
    try:
        client = Client(base_url, body(300, stream=True))
        client.start()
        assert client.started_streaming.wait(60)
        os.kill(process.pid, signal.SIGTERM)
        client.join(120)
        assert process.wait(timeout=120) == 0, log.read_text()
    finally:
        kill_group(process)
    assert client.events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in client.events[:-1]]
    assert all("error" not in chunk for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "Traceback" not in log.read_text()


def test_a_draining_server_refuses_new_work(tiny_model_dir):
    """While it drains, /v1 answers 503 with the error object and /health says "draining"."""
    from aios.config import features_up_to
    from aios.engine.llm_engine import LLMEngine
    from aios.server.app import ServerSettings, build_app
    from aios.server.async_engine import AsyncEngine
    from aios.server.launcher import ServerThread

    options = {**features_up_to(15), "attention_backend": "auto", "num_kvcache_blocks": 64, "max_model_len": 256}
    app = build_app(AsyncEngine(LLMEngine(str(tiny_model_dir), **options)), ServerSettings(served_model_name="tiny"))
    with ServerThread(app) as base_url:
        ok = httpx.post(base_url + "/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2},
                        timeout=30)
        assert ok.status_code == 200
        app.state.server.begin_drain()
        refused = httpx.post(base_url + "/v1/completions", json={"model": "tiny", "prompt": "hi"}, timeout=30)
        assert error_of(refused, 503)["code"] == "server_shutting_down"
        health = httpx.get(base_url + "/health", timeout=30)
        assert health.status_code == 503 and health.json()["status"] == "draining"
