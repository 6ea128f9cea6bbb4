"""The engine loop behind the server: one thread steps the engine, each request reads its own queue.

    HTTP handlers (asyncio event loop)              engine thread
    ----------------------------------              -------------
    generate(): put ("add", stream) in inbox ──►    drain inbox: add_request / abort
                await stream.queue.get()            engine.step()
                       ▲                            dispatch(): new tokens of each request
                       └──── loop.call_soon_threadsafe(queue.put_nowait, output) ◄──┘

Only the engine thread touches the engine (scheduler, block manager, model), so
nothing in it needs a lock: handlers talk to it through the thread-safe inbox, and
it talks back through each request's asyncio queue. An asyncio queue belongs to
its event loop and is not thread-safe, so the engine thread never calls it
directly: it asks the loop to run ``put_nowait`` for it.

A client that goes away closes its ``generate`` iterator; that sends an abort, and
the engine thread removes the sequence and frees its KV-cache blocks. An exception
inside a step is first blamed on the requests that cannot be stepped on their own
(``LLMEngine.request_fault``): only those fail, the others are requeued. If no request
is at fault, the engine is: every running request fails (their iterators raise
``EngineError``), the failure counts against ``healthy``, and the loop goes on.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aios.engine.llm_engine import LLMEngine, RequestError
from aios.engine.sequence import Sequence, SequenceStatus
from aios.sampling_params import SamplingParams

logger = logging.getLogger("aios.server")


class EngineError(RuntimeError):
    """The request ended with an error instead of a finish reason.

    kind: "engine"   the engine failed (HTTP 500),
          "request"  this request could not be served (HTTP 400),
          "shutdown" the server stopped before the request finished (HTTP 503).
    """

    def __init__(self, message: str, kind: str = "engine"):
        super().__init__(message)
        self.kind = kind


@dataclass
class RequestOutput:
    """What one engine step produced for one request.

    new_token_ids: tokens generated since the previous output (usually one).
    finish_reason: None while the request runs; then "stop" (EOS), "length" (max_tokens or
                   the context length) or "abort" (cancelled).
    error:         set when the request failed; the request is over.
    error_kind:    EngineError's kind of that failure.
    """

    new_token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None
    error_kind: str = "engine"

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None or self.error is not None


class RequestStream:
    """One request's side of the loop: its prompt and params, its Sequence once added, its queue."""

    def __init__(self, token_ids: list[int], params: SamplingParams, loop: asyncio.AbstractEventLoop,
                 priority: int = 0):
        self.token_ids = token_ids
        self.params = params
        self.priority = priority
        self.loop = loop
        self.queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        self.seq: Sequence | None = None
        self.num_sent = 0  # completion tokens already put in the queue
        self.closed = False  # the last output was put (or the request was aborted)
        self.error: str | None = None  # set by the engine thread when it fails the request
        self.error_kind = "engine"

    def put(self, output: RequestOutput) -> None:
        """Hand ``output`` to the request's queue. Called from the engine thread."""
        # Hint: asyncio objects are not thread-safe: ask the queue's event loop to do the put for you.
        raise NotImplementedError("Lesson 15: implement RequestStream.put in aios/server/async_engine.py — see exercises/lesson15/README.md, 'What to implement'")


class AsyncEngine:
    """Runs ``engine.step()`` in a background thread and streams each request's tokens to it.

    engine:          the LLMEngine to drive (only this object's thread touches it once started).
    idle_wait:       seconds the thread sleeps when there is nothing to do (a new request wakes it at once).
    poll_interval:   how often a waiting request checks that the engine loop is still alive.
    unhealthy_after: this many failed steps in a row and ``healthy`` turns False.
    """

    def __init__(self, engine: LLMEngine, idle_wait: float = 0.5, poll_interval: float = 1.0,
                 unhealthy_after: int = 3):
        self.engine = engine
        self.idle_wait = idle_wait
        self.poll_interval = poll_interval
        self.unhealthy_after = unhealthy_after
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._streams: dict[int, RequestStream] = {}  # seq_id -> stream of every request in the engine
        self.num_steps = 0
        self.num_errors = 0
        self.consecutive_errors = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="aios-engine-loop", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the thread; requests still running get an error."""
        if self._thread is None:
            return
        self._stopping.set()
        self._wakeup.set()
        self._thread.join(timeout)
        self._thread = None

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def healthy(self) -> bool:
        return self.is_running and self.consecutive_errors < self.unhealthy_after

    @property
    def num_active_requests(self) -> int:
        return len(self._streams)

    # ------------------------------------------------------------ the handlers' side

    async def generate(self, token_ids: list[int], params: SamplingParams,
                       priority: int = 0) -> AsyncIterator[RequestOutput]:
        """Submit one request and yield its outputs until it finishes.

        Leaving the loop early (break, cancellation, a closed connection) aborts the
        request and frees its blocks. Raises EngineError if the request failed.
        priority: lower is admitted first (see Scheduler.add).
        """
        if not self.is_running:
            raise EngineError("the engine loop is not running")
        stream = RequestStream(list(token_ids), params, asyncio.get_running_loop(), priority)
        self._submit(("add", stream))
        try:
            while True:
                try:
                    async with asyncio.timeout(self.poll_interval):
                        output = await stream.queue.get()
                except TimeoutError:  # nothing yet: still alive?
                    if stream.error is not None:
                        raise EngineError(stream.error, stream.error_kind) from None
                    if not self.is_running:
                        raise EngineError("the engine loop is not running") from None
                    continue
                if output.error is not None:
                    raise EngineError(output.error, output.error_kind)
                yield output
                if output.finished:
                    return
        finally:
            if not stream.closed:
                self._submit(("abort", stream))

    def _submit(self, message: tuple) -> None:
        self._inbox.put(message)
        self._wakeup.set()

    def abort_all(self, message: str = "the server is shutting down") -> None:
        """End every request in the engine with a "shutdown" error (the server's drain deadline passed).

        Safe from any thread: the engine thread does it between two steps.
        """
        self._submit(("abort_all", message))

    # ------------------------------------------------------------ the engine thread

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wakeup.clear()
            self._drain_inbox()
            if self.engine.is_finished():
                self._wakeup.wait(self.idle_wait)
                continue
            try:
                self.engine.step()
                self._dispatch()
            except Exception as exc:  # noqa: BLE001 - one bad step must not take the server down
                self.engine.forget_failed_step()
                if not self._fail_culprits():
                    self._fail_running(exc)
                continue
            self.num_steps += 1
            self.consecutive_errors = 0
        self._drain_inbox()
        self._fail_all("the server is shutting down")

    def _fail_all(self, message: str) -> None:
        for stream in list(self._streams.values()):
            self._fail(stream, message, "shutdown")

    def _drain_inbox(self) -> None:
        """Apply every pending add and abort (engine thread only)."""
        while True:
            try:
                action, stream = self._inbox.get_nowait()
            except queue.Empty:
                return
            if action == "abort_all":
                self._fail_all(stream)  # here ``stream`` is the message
                continue
            try:
                if action == "add":
                    self._add(stream)
                else:
                    self._abort(stream)
            except RequestError as exc:  # checked by the server already; an offline caller may get here
                self._fail(stream, str(exc), "request")
            except Exception as exc:  # noqa: BLE001 - keep serving the others
                logger.exception("engine loop: %s failed", action)
                self._fail(stream, f"internal engine error during {action}: {type(exc).__name__}: {exc}")

    def _add(self, stream: RequestStream) -> None:
        if stream.closed:  # aborted before it was added
            return
        stream.seq = self.engine.add_request(stream.token_ids, stream.params, stream.priority)
        self._streams[stream.seq.seq_id] = stream

    def _abort(self, stream: RequestStream) -> None:
        stream.closed = True
        if stream.seq is not None and self._streams.pop(stream.seq.seq_id, None) is not None:
            self.engine.abort(stream.seq.seq_id)

    def _dispatch(self) -> None:
        """After a step: put each request's new tokens in its queue; close the streams of finished ones."""
        # Hint: compare each sequence's completion tokens with how many its stream has been sent.
        # Hint: a finished sequence's blocks are already free (postprocess did it); just forget its stream.
        raise NotImplementedError("Lesson 15: implement AsyncEngine._dispatch in aios/server/async_engine.py — see exercises/lesson15/README.md, 'What to implement'")

    def _fail(self, stream: RequestStream, message: str, kind: str = "engine") -> None:
        """End ``stream`` with an error: remove its sequence from the engine if possible, then tell the client."""
        stream.error_kind = kind
        stream.error = message  # seen by generate() even if the queue hand-off below fails
        if stream.seq is not None:
            self._streams.pop(stream.seq.seq_id, None)
            try:
                self.engine.abort(stream.seq.seq_id)
            except Exception:  # noqa: BLE001 - the state is already broken; still answer the client
                logger.exception("could not abort sequence %d", stream.seq.seq_id)
        stream.closed = True
        try:
            stream.put(RequestOutput(error=message, error_kind=kind))
        except Exception:  # noqa: BLE001
            logger.exception("could not hand the error to request %s", stream.seq)

    def _fail_culprits(self) -> bool:
        """After a failed step: fail only the running requests the engine finds at fault, requeue the rest.

        Returns False when no request is at fault (then the engine is, and ``_fail_running`` handles it).
        A request's own bad input is no sign of the engine's health: it does not count as an engine error.
        """
        faults = {}
        for stream in self._streams.values():
            if stream.seq.status is not SequenceStatus.WAITING:
                fault = self.engine.request_fault(stream.seq)
                if fault is not None:
                    faults[stream.seq.seq_id] = (stream, fault)
        if not faults:
            return False
        for stream, fault in faults.values():
            logger.warning("request (sequence %d) failed on its own settings and was removed: %s",
                           stream.seq.seq_id, fault)
            self._fail(stream, f"this request cannot be served: {fault}", "request")
        self.engine.requeue_running()
        return True

    def _fail_running(self, exc: Exception) -> None:
        """A step raised: fail every request that was running or just finished (its state is suspect or its
        end was not delivered); the waiting ones stay."""
        self.num_errors += 1
        self.consecutive_errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        logger.exception("engine step failed; failing the running requests")
        for stream in list(self._streams.values()):
            if stream.seq.status is not SequenceStatus.WAITING:
                self._fail(stream, f"internal engine error: {self.last_error}")
        if self.consecutive_errors >= self.unhealthy_after:
            time.sleep(min(1.0, 0.05 * self.consecutive_errors))  # do not spin on a broken engine
