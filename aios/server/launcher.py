"""Starting the server: from an engine's options (``aios serve``), or in a background thread (tests, demos).

    engine = AsyncEngine(LLMEngine(model_dir, **options))
    app = build_app(engine, ServerSettings(served_model_name="tiny"))
    with ServerThread(app) as base_url:            # an unused loopback port
        ...                                        # talk to f"{base_url}/v1"

Both run ``AiosServer``, uvicorn with two additions for clients nobody controls:

- a deadline for each request's head (request line and headers): a connection that
  sends half a request is closed after ``head_timeout`` seconds, while uvicorn's own
  keep-alive timer only covers idle connections (the body has the app's ``body_timeout``);
- a graceful drain on SIGTERM/SIGINT: the app refuses new work (503) and gives running
  requests ``shutdown_timeout`` seconds before ending them with an error (app.py), and
  uvicorn waits a little longer than that before it cancels anything. The process then
  exits with status 0 (uvicorn would re-raise the signal).
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

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


#: Seconds uvicorn waits after the app's own drain deadline before it cancels what is left.
DRAIN_MARGIN = 5.0


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose next request head is not complete in time."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_deadline()

    def _arm_head_deadline(self) -> None:
        cycle = self.cycle  # a new request head replaces it

        def expire() -> None:
            if self.cycle is cycle and not self.transport.is_closing():
                self.transport.close()

        self.loop.call_later(self.config.head_timeout, expire)


def server_config(app, host: str = LOOPBACK, port: int = 0, head_timeout: float = 10.0,
                  keep_alive_timeout: int = 5, **options) -> uvicorn.Config:
    """uvicorn's settings for ``app``: the deadline protocol, keep-alive and drain timeouts (see above)."""
    drain = app.state.settings.shutdown_timeout + DRAIN_MARGIN
    config = uvicorn.Config(app, host=host, port=port, lifespan="on", http=DeadlineH11Protocol,
                            timeout_keep_alive=keep_alive_timeout, timeout_graceful_shutdown=drain, **options)
    config.head_timeout = head_timeout
    return config


class AiosServer(uvicorn.Server):
    """uvicorn's server, draining the app on the first SIGTERM or SIGINT (a second SIGINT forces the exit)."""

    def handle_exit(self, sig: int, frame) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
            return
        openai_server = getattr(getattr(self.config.app, "state", None), "server", None)  # build_app's apps have one
        if openai_server is not None:
            openai_server.begin_drain()
        self.should_exit = True


class ServerThread:
    """Runs uvicorn with ``app`` in a daemon thread; ``start()`` returns the base URL once it accepts connections.

    port 0 lets the operating system pick a free port (no race with other processes).
    Always stopped by ``stop()`` or the ``with`` block, which waits for the engine loop to end.
    """

    def __init__(self, app, host: str = LOOPBACK, port: int = 0, log_level: str = "warning",
                 head_timeout: float = 10.0):
        self.server = AiosServer(server_config(app, host, port, head_timeout, log_level=log_level))
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
        """Drain and stop, as SIGTERM does to ``aios serve``."""
        self.server.handle_exit(signal.SIGTERM, None)
        if self.thread.is_alive():
            self.thread.join(timeout)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
