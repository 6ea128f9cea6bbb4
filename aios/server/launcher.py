"""Starting the server: from an engine's options (``aios serve``), or in a background thread (tests, demos).

    engine = AsyncEngine(LLMEngine(model_dir, **options))
    app = build_app(engine, ServerSettings(served_model_name="tiny"))
    with ServerThread(app) as base_url:            # an unused loopback port
        ...                                        # talk to f"{base_url}/v1"
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import uvicorn

from aios.engine.llm_engine import LLMEngine
from aios.server.app import ServerSettings, build_app
from aios.server.async_engine import AsyncEngine

LOOPBACK = "127.0.0.1"


def create_app(model: str | Path, settings: ServerSettings | None = None, **engine_options):
    """Load the engine for ``model`` and return the FastAPI app serving it (the engine loop starts with the app).

    ``settings`` defaults to serving the model under its folder's name.
    """
    settings = settings or ServerSettings(served_model_name=Path(model).resolve().name)
    engine = LLMEngine(str(model), **engine_options)
    return build_app(AsyncEngine(engine), settings)


class ServerThread:
    """Runs uvicorn with ``app`` in a daemon thread; ``start()`` returns the base URL once it accepts connections.

    port 0 lets the operating system pick a free port (no race with other processes).
    Always stopped by ``stop()`` or the ``with`` block, which waits for the engine loop to end.
    """

    def __init__(self, app, host: str = LOOPBACK, port: int = 0, log_level: str = "warning"):
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                                timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.host = host
        self.thread = threading.Thread(target=self.server.run, name="aios-uvicorn", daemon=True)
        self.base_url: str | None = None

    def start(self, timeout: float = 60.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server thread stopped before it started (see the log above)")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the server did not start within {timeout} s")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://{self.host}:{port}"
        return self.base_url

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
