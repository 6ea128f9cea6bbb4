"""Fixtures of lesson 15's tests: one real server on a free loopback port, shared by the whole directory.

The server runs in this process (uvicorn in a thread), so tests can also look at its
engine: the block manager's free count, the engine loop's counters. It is always
stopped at the end of the session, and every client call has a timeout.
"""

from dataclasses import dataclass

import pytest

from aios.config import features_up_to
from aios.engine.llm_engine import LLMEngine

# Everything up to lesson 15; "auto" attention picks the PyTorch path on the CPU (the Triton
# interpreter would be slow) and lesson 9's kernels on a GPU. A small KV cache keeps steps fast.
ENGINE_OPTIONS = {**features_up_to(15), "attention_backend": "auto", "num_kvcache_blocks": 256,
                  "max_num_seqs": 32, "max_model_len": 512}
MODEL_NAME = "tiny"
CLIENT_TIMEOUT = 60


@dataclass
class LiveServer:
    base_url: str
    app: object
    async_engine: object
    model: str = MODEL_NAME

    @property
    def engine(self):
        return self.async_engine.engine

    def client(self, **kwargs):
        from openai import OpenAI

        return OpenAI(base_url=self.base_url + "/v1", api_key="unused", max_retries=0,
                      timeout=CLIENT_TIMEOUT, **kwargs)

    def async_client(self, **kwargs):
        from openai import AsyncOpenAI

        return AsyncOpenAI(base_url=self.base_url + "/v1", api_key="unused", max_retries=0,
                           timeout=CLIENT_TIMEOUT, **kwargs)

    def metric(self, name: str, **labels) -> float:
        return self.app.state.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="session")
def server(tiny_model_dir):
    """A running server for the tiny model, served as "tiny"."""
    from aios.server.app import ServerSettings, build_app
    from aios.server.async_engine import AsyncEngine
    from aios.server.launcher import ServerThread

    engine = LLMEngine(str(tiny_model_dir), **ENGINE_OPTIONS)
    async_engine = AsyncEngine(engine, poll_interval=0.5)
    app = build_app(async_engine, ServerSettings(served_model_name=MODEL_NAME, max_tokens_limit=400))
    thread = ServerThread(app)
    base_url = thread.start(timeout=60)
    try:
        yield LiveServer(base_url, app, async_engine)
    finally:
        thread.stop(timeout=30)


@pytest.fixture()
def client(server):
    with server.client() as client:
        yield client
