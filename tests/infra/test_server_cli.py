"""``python -m aios serve`` and ``python -m aios bench-serve`` as a user runs them: real processes on loopback."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

STARTUP_TIMEOUT = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model_dir, log_path, *options) -> tuple[subprocess.Popen, str]:
    """``aios serve`` on 127.0.0.1 in its own process group; returns (process, base URL) once /health answers 200."""
    port = free_port()
    command = [sys.executable, "-m", "aios", "serve", "--model", str(model_dir), "--port", str(port),
               "--log-level", "warning", *options]
    with open(log_path, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if process.poll() is not None:
            pytest.fail(f"aios serve exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(base_url + "/health", timeout=2).status_code == 200:
                return process, base_url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            kill_group(process)
            pytest.fail(f"aios serve did not answer /health within {STARTUP_TIMEOUT} s:\n{log_path.read_text()}")
        time.sleep(0.2)


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the server's whole process group and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    """``aios serve`` in a subprocess with an API key and a served model name; always terminated."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    process, base_url = start_server(tiny_model_dir, log, "--served-model-name", "tiny-cli", "--api-key", "k123",
                                     "--num-kvcache-blocks", "128", "--max-model-len", "256")
    try:
        yield base_url, log
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_serve_binds_loopback_and_uses_the_given_name(served):
    base_url, log = served
    headers = {"Authorization": "Bearer k123"}
    models = httpx.get(base_url + "/v1/models", headers=headers, timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["tiny-cli"]
    assert httpx.get(base_url + "/v1/models", timeout=10).status_code == 401
    body = {"model": "tiny-cli", "prompt": "Hello", "max_tokens": 5, "temperature": 0, "ignore_eos": True}
    result = httpx.post(base_url + "/v1/completions", json=body, headers=headers, timeout=30).json()
    assert result["usage"]["completion_tokens"] == 5


def test_bench_serve_cli_reports_and_writes_json(served, tmp_path):
    base_url, _ = served
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "aios", "bench-serve", "--base-url", base_url, "--model", "tiny-cli",
               "--api-key", "k123", "--num-prompts", "8", "--max-concurrency", "4", "--input-len", "8",
               "--output-len", "5", "--request-timeout", "60", "--duration", "60", "--no-progress",
               "--result-json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "TTFT" in done.stdout and "TPOT" in done.stdout and "output throughput" in done.stdout
    data = json.loads(out.read_text())
    assert data["summary"]["completed"] == 8 and data["summary"]["total_output_tokens"] == 40
    assert len(data["requests"]) == 8 and all(r["ok"] for r in data["requests"])


def test_bench_serve_counts_failures(served, tmp_path):
    base_url, _ = served
    command = [sys.executable, "-m", "aios", "bench-serve", "--base-url", base_url, "--model", "tiny-cli",
               "--num-prompts", "2", "--output-len", "2", "--input-len", "2", "--no-progress"]  # no API key
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stdout.splitlines()[0].split()[-3:] == ["0", "/", "2"], done.stdout
    assert "HTTP 401" in done.stderr


def test_serve_refuses_a_missing_model_folder(tmp_path):
    done = subprocess.run([sys.executable, "-m", "aios", "serve", "--model", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "not a folder" in done.stderr


def test_cli_help_lists_serve_and_bench_serve():
    done = subprocess.run([sys.executable, "-m", "aios", "--help"], capture_output=True, text=True, timeout=60)
    assert "serve" in done.stdout and "bench-serve" in done.stdout


@pytest.mark.parametrize("options, message", [
    (["--pipeline-parallel-size", "0"], "pipeline_parallel_size must be >= 1"),
    (["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 0}'], "num_speculative_tokens"),
])
def test_bench_refuses_a_bad_engine_option_without_a_traceback(tiny_model_dir, options, message):
    """An option the engine refuses is one line naming the README section, exit status 2 (AIOS_DEBUG=1: traceback)."""
    env = {key: value for key, value in os.environ.items() if key != "AIOS_DEBUG"}
    done = subprocess.run([sys.executable, "-m", "aios", "bench", "--model", str(tiny_model_dir), "--num-requests", "1",
                           "--no-progress", *options], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "README" in done.stderr
    assert "Traceback" not in done.stderr
