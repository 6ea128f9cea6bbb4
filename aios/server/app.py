"""The OpenAI-compatible HTTP API: a FastAPI app in front of an AsyncEngine.

    POST /v1/completions        text in, text out (``stream: true`` for Server-Sent Events)
    POST /v1/chat/completions   messages in (the checkpoint's chat template), an assistant message out
    GET  /v1/models             the one model this server serves
    GET  /health                200 while the engine loop runs and its steps succeed, else 503
    GET  /metrics               Prometheus text format (see aios.server.metrics)
    GET  /openapi.json          the API's OpenAPI document, request bodies included (protocol.py's schemas)

A request's path: read and check the JSON body (protocol.py), tokenize the prompt,
turn its fields into SamplingParams, submit it to the engine loop (async_engine.py),
then either collect every token and answer once, or stream text pieces as they come
(streaming.py). The tokenizer is only used here, on the event loop's thread; the
engine thread only sees token ids.

Around the handlers, ``GuardMiddleware`` checks the API key and that key's limits
(tenants.py), refuses work while the server drains, counts every answer in the metrics,
and turns any unexpected exception into one logged, counted 500 with a request id.
On SIGTERM (launcher.py) the server drains: new requests get 503, running ones have
``shutdown_timeout`` seconds to finish, then end with an error event or a JSON error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from aios.engine.llm_engine import RequestError
from aios.server import streaming
from aios.server.async_engine import AsyncEngine, EngineError, RequestOutput
from aios.server.metrics import RequestTimer, ServerMetrics
from aios.server.protocol import (CHAT_REQUEST_SCHEMA, COMPLETION_REQUEST_SCHEMA, APIError, GenerationRequest,
                                  bad_request, parse_chat_request, parse_completion_request, parse_json,
                                  rename_param, sampling_params_from_request)
from aios.server.tenants import APIKey, KeyRing, LimitExceeded

logger = logging.getLogger("aios.server")

#: Default ``max_tokens`` of /v1/completions when the request gives none (OpenAI's default).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


@dataclass
class ServerSettings:
    """How the server answers, apart from the engine's own options.

    served_model_name: the id clients put in ``model`` (``aios serve`` uses the checkpoint folder's name).
    api_key:           when set, every /v1 request needs ``Authorization: Bearer <api_key>``.
    api_keys:          more keys, each with optional limits (tenants.py); any key given opens /v1.
    max_body_bytes:    larger request bodies get 413.
    max_tokens_limit:  the most ``max_tokens`` one request may ask for (default: the context length).
    body_timeout:      seconds a client has to send a request's whole body (then 408).
    shutdown_timeout:  on SIGTERM, seconds running requests have to finish before they are ended.
    """

    served_model_name: str
    api_key: str | None = None
    api_keys: list[APIKey] = field(default_factory=list)
    max_body_bytes: int = 4 * 1024 * 1024
    max_tokens_limit: int | None = None
    body_timeout: float = 30.0
    shutdown_timeout: float = 30.0

    def __post_init__(self):
        timeouts = {"body_timeout": self.body_timeout, "shutdown_timeout": self.shutdown_timeout}
        problems = [f"{name} must be a positive number of seconds, got {value!r}" for name, value in timeouts.items()
                    if not (isinstance(value, (int, float)) and 0 < value < math.inf)]
        if not isinstance(self.max_body_bytes, int) or self.max_body_bytes < 1:
            problems.append(f"max_body_bytes must be >= 1, got {self.max_body_bytes!r}")
        if self.max_tokens_limit is not None and (not isinstance(self.max_tokens_limit, int)
                                                  or self.max_tokens_limit < 1):
            problems.append(f"max_tokens_limit must be None (the context length) or >= 1, "
                            f"got {self.max_tokens_limit!r}")
        if problems:
            raise ValueError("Invalid server settings: " + "; ".join(problems))

    def all_keys(self) -> list[APIKey]:
        return ([APIKey(self.api_key, "api-key")] if self.api_key else []) + list(self.api_keys)


@dataclass
class Job:
    """One prompt of a request, ready for the engine."""

    token_ids: list[int]
    params: object  # SamplingParams
    priority: int = 0


class ErrorResponse(JSONResponse):
    """An error object as ASCII JSON: text echoed from the request (even a lone surrogate) cannot break it."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def error_response(error: APIError) -> JSONResponse:
    return ErrorResponse(error.body(), status_code=error.status, headers=error.headers)


#: How each kind of EngineError is answered: (HTTP status, error type, error code).
ENGINE_ERROR_REPLIES = {"engine": (500, "internal_server_error", "engine_error"),
                        "request": (400, "invalid_request_error", "request_failed"),
                        "shutdown": (503, "service_unavailable", "server_shutting_down")}


def engine_error_reply(error: EngineError) -> APIError:
    status, kind, code = ENGINE_ERROR_REPLIES.get(error.kind, ENGINE_ERROR_REPLIES["engine"])
    return APIError(status, str(error), kind, None, code)


def check_media_type(headers: Headers) -> None:
    """415 for a body that is compressed or declared as something else than JSON (a missing
    Content-Type is read as JSON). Compressed bodies are refused, not inflated: a few kilobytes
    of gzip can inflate to gigabytes, past any body size limit."""
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise APIError(415, f"Content-Encoding {encoding!r} is not supported: send the body uncompressed",
                       "invalid_request_error", None, "unsupported_media_type")
    content_type = headers.get("content-type")
    media_type = (content_type or "application/json").partition(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise APIError(415, f"Content-Type {content_type!r} is not supported: send JSON with "
                       "'Content-Type: application/json'", "invalid_request_error", None, "unsupported_media_type")


async def read_json_body(request: Request, limit: int, timeout: float = 30.0) -> dict:
    """The request body as a JSON object: 415 when it is not sent as plain JSON (``check_media_type``),
    413 when it is larger than ``limit`` bytes, 400 when it is not JSON (protocol.parse_json),
    408 when the client takes more than ``timeout`` seconds to send it."""
    check_media_type(request.headers)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body has {declared} bytes; the limit is {limit}",
                       "invalid_request_error", None, "request_too_large")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise APIError(413, f"the request body is larger than the limit of {limit} bytes",
                                   "invalid_request_error", None, "request_too_large")
                chunks.append(chunk)
    except ClientDisconnect:
        raise ConnectionAbortedError("the client disconnected while sending the body") from None
    except TimeoutError:
        raise APIError(408, f"the request body did not arrive within {timeout:g} s", "invalid_request_error",
                       None, "request_timeout") from None
    return parse_json(b"".join(chunks))


def request_id_of(request: Request) -> str:
    """The id GuardMiddleware gave this request (in logs, ``X-Request-Id`` and the response's ``id``)."""
    return request.scope.get("aios.request_id") or uuid.uuid4().hex


async def wait_for_disconnect(request: Request) -> None:
    """Return when the client closes the connection (the body must have been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, coroutine):
    """Await ``coroutine``, cancelling it if the client disconnects first (then raise ConnectionAbortedError)."""
    work = asyncio.ensure_future(coroutine)
    watcher = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            return work.result()
        raise ConnectionAbortedError("the client disconnected")
    finally:
        for task in (work, watcher):
            task.cancel()
        await asyncio.gather(work, watcher, return_exceptions=True)


async def merge(generators: list[AsyncIterator]) -> AsyncIterator[tuple[int, object]]:
    """Interleave several async iterators: yields (index, item) as items arrive; closes them all at the end."""
    if len(generators) == 1:
        async with contextlib.aclosing(generators[0]) as only:
            async for item in only:
                yield 0, item
        return
    merged: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(index: int, generator: AsyncIterator) -> None:
        try:
            async with contextlib.aclosing(generator):
                async for item in generator:
                    await merged.put((index, item, None))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer
            await merged.put((index, None, exc))
        await merged.put((index, done, None))

    tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(generators)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item, error = await merged.get()
            if error is not None:
                raise error
            if item is done:
                remaining -= 1
                continue
            yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class OpenAIServer:
    """The request handlers; ``build_app`` wires them into FastAPI."""

    def __init__(self, async_engine: AsyncEngine, settings: ServerSettings, metrics: ServerMetrics):
        self.async_engine = async_engine
        self.engine = async_engine.engine
        self.tokenizer = self.engine.tokenizer
        self.settings = settings
        self.metrics = metrics
        self.max_model_len = self.engine.max_request_len  # the context, or the KV cache if that is smaller
        self.max_tokens_limit = settings.max_tokens_limit or self.max_model_len - 1
        self.created = int(time.time())
        #: the tokenizer's special tokens ("<|im_start|>", ...): chat messages may not contain them
        added = getattr(self.tokenizer, "added_tokens_decoder", {}).values()
        self.control_tokens = sorted(token.content for token in added if token.special and token.content)
        self.draining = False
        self.keys = KeyRing(settings.all_keys())  # checked by GuardMiddleware, charged per prompt by charge_prompts
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's event loop, once started

    def begin_drain(self) -> None:
        """Stop taking requests (503) and give the running ones ``shutdown_timeout`` seconds, then end them.

        Called from uvicorn's signal handler (launcher.AiosServer), so it only sets a flag and
        hands the rest to the event loop.
        """
        if self.draining or self.loop is None:
            return
        self.draining = True
        self.loop.call_soon_threadsafe(self._start_drain_deadline)

    def _start_drain_deadline(self) -> None:
        timeout = self.settings.shutdown_timeout
        logger.warning("shutting down: refusing new requests; %d running get %g s to finish",
                       self.async_engine.num_active_requests, timeout)
        self.loop.call_later(timeout, self.async_engine.abort_all,
                             f"the server shut down before this request finished (grace period {timeout:g} s)")

    # ------------------------------------------------------------ preparing requests

    def charge_prompts(self, request: Request, count: int) -> None:
        """Each prompt of a request runs as its own sequence, so its key's limits count every prompt:
        GuardMiddleware counted the first, this counts the others (429 over a limit now, 400 for
        more prompts than the key may ever run at once). The middleware releases them all."""
        key = request.scope.get("aios.api_key")
        if key is None or count <= 1:
            return
        for limit, what in ((key.max_concurrency, "requests in flight"), (key.rate, "requests per minute")):
            if limit is not None and count > limit:
                raise bad_request(f"this request has {count} prompts, but its API key may have {limit:g} "
                                  f"{what}: send fewer prompts per request", param="prompt")
        try:
            self.keys.acquire(key, count - 1)
        except LimitExceeded as exceeded:
            raise limit_error(exceeded, key) from None
        request.scope["aios.api_key_count"] = count

    def make_job(self, prompt: str | list[int], sampling: dict, default_max_tokens: int | None,
                 priority: int = 0) -> Job:
        """Tokenize one prompt, build its SamplingParams and check the engine can serve it (400 otherwise)."""
        token_ids = self.engine.tokenize(prompt)
        if not token_ids:
            raise bad_request("the prompt is empty", param="prompt")
        params = sampling_params_from_request(sampling, len(token_ids), self.max_model_len,
                                              self.max_tokens_limit, default_max_tokens)
        try:
            self.engine.check_request(token_ids, params)
        except RequestError as error:
            raise bad_request(str(error), param=error.param) from None
        return Job(token_ids, params, priority)

    def chat_prompt(self, messages: list[dict]) -> str:
        """The checkpoint's chat template applied to ``messages``, ending with the assistant's turn.

        The result is tokenized with its special tokens parsed, so a message may not contain one:
        "<|im_end|>" in a user's text would end their turn and let them write the system's.
        """
        if not getattr(self.tokenizer, "chat_template", None):
            raise bad_request("this model has no chat template; use /v1/completions", param="messages")
        for i, message in enumerate(messages):
            forged = next((token for token in self.control_tokens if token in message["content"]), None)
            if forged is not None:
                raise bad_request(f"messages[{i}].content contains the control token {forged!r}, which only "
                                  "the chat template may write", param="messages")
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # noqa: BLE001 - a template error is the request's fault
            raise bad_request(f"the chat template could not render these messages: {exc}",
                              param="messages") from None

    # ------------------------------------------------------------ running requests

    async def run_job(self, job: Job, arrival: float) -> AsyncIterator[tuple[str, RequestOutput]]:
        """Yield (new text, output) for one prompt; records its metrics."""
        timer = RequestTimer(self.metrics, arrival, len(job.token_ids))
        detokenizer = streaming.IncrementalDetokenizer(self.tokenizer)
        reason = "abort"
        try:
            async with contextlib.aclosing(self.async_engine.generate(job.token_ids, job.params, job.priority)) as outputs:
                async for output in outputs:
                    timer.tokens(len(output.new_token_ids), time.perf_counter())
                    text = detokenizer.step(output.new_token_ids)
                    if output.finished:
                        text += detokenizer.finish()
                        reason = output.finish_reason
                    yield text, output
        except EngineError:
            reason = "error"
            raise
        finally:
            timer.finish(reason, time.perf_counter())

    async def collect(self, job: Job, arrival: float) -> tuple[list[int], str]:
        """Run one prompt to the end; returns (completion token ids, finish reason)."""
        token_ids, reason = [], None
        async for _, output in self.run_job(job, arrival):
            token_ids.extend(output.new_token_ids)
            reason = output.finish_reason
        return token_ids, reason

    async def collect_all(self, request: Request, jobs: list[Job], arrival: float):
        try:
            return await unless_disconnected(request, asyncio.gather(*(self.collect(j, arrival) for j in jobs)))
        except EngineError as error:
            self.log_failure(request_id_of(request), error)
            raise engine_error_reply(error) from None

    @staticmethod
    def log_failure(request_id: str, error: EngineError) -> None:
        """One line per request that ended with an error (the engine logged its own failures already)."""
        if error.kind == "shutdown":
            logger.warning("request %s aborted: %s", request_id, error)
        elif error.kind == "request":
            logger.info("request %s failed: %s", request_id, error)

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    async def sse(self, events: AsyncIterator[dict], request_id: str = "") -> AsyncIterator[str]:
        """Frame ``events`` as SSE, then ``[DONE]``; a failed request becomes an error event."""
        try:
            async for event in events:
                yield streaming.sse_event(event)
        except EngineError as error:
            self.log_failure(request_id, error)
            yield streaming.sse_event(engine_error_reply(error).body())
        yield streaming.sse_event("[DONE]")

    # ------------------------------------------------------------ endpoints

    async def completions(self, request: Request) -> Response:
        arrival = time.perf_counter()
        body = await read_json_body(request, self.settings.max_body_bytes, self.settings.body_timeout)
        parsed = parse_completion_request(body, self.settings.served_model_name)
        self.charge_prompts(request, len(parsed.prompts))
        jobs = [self.make_job(p, parsed.sampling, COMPLETIONS_DEFAULT_MAX_TOKENS, parsed.priority)
                for p in parsed.prompts]
        request_id, model = f"cmpl-{request_id_of(request)}", self.settings.served_model_name
        if parsed.stream:
            events = self.completion_events(request_id, model, jobs, parsed, arrival)
            return StreamingResponse(self.sse(events, request_id_of(request)), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        results = await self.collect_all(request, jobs, arrival)
        texts = [self.decode(ids) for ids, _ in results]
        usage = streaming.usage(sum(len(j.token_ids) for j in jobs), sum(len(ids) for ids, _ in results))
        return JSONResponse(streaming.completion_response(request_id, self.created_now(), model, texts,
                                                          [reason for _, reason in results], usage))

    async def completion_events(self, request_id: str, model: str, jobs: list[Job], parsed: GenerationRequest,
                                arrival: float) -> AsyncIterator[dict]:
        created, completion_tokens = self.created_now(), 0
        async for index, (text, output) in merge([self.run_job(job, arrival) for job in jobs]):
            completion_tokens += len(output.new_token_ids)
            if text or output.finished:
                yield streaming.completion_chunk(request_id, created, model, index, text, output.finish_reason)
        if parsed.include_usage:
            usage = streaming.usage(sum(len(j.token_ids) for j in jobs), completion_tokens)
            yield streaming.usage_chunk(request_id, created, model, "text_completion", usage)

    async def chat_completions(self, request: Request) -> Response:
        arrival = time.perf_counter()
        body = await read_json_body(request, self.settings.max_body_bytes, self.settings.body_timeout)
        messages, parsed = parse_chat_request(body, self.settings.served_model_name)
        prompt_ids = self.tokenizer.encode(self.chat_prompt(messages), add_special_tokens=False)
        try:
            job = self.make_job(prompt_ids, parsed.sampling, None, parsed.priority)
        except APIError as error:
            raise rename_param(error, parsed.param_names) from None
        request_id, model = f"chatcmpl-{request_id_of(request)}", self.settings.served_model_name
        if parsed.stream:
            events = self.chat_events(request_id, model, job, parsed, arrival)
            return StreamingResponse(self.sse(events, request_id_of(request)), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        [(token_ids, reason)] = await self.collect_all(request, [job], arrival)
        usage = streaming.usage(len(job.token_ids), len(token_ids))
        return JSONResponse(streaming.chat_response(request_id, self.created_now(), model, self.decode(token_ids),
                                                    reason, usage))

    async def chat_events(self, request_id: str, model: str, job: Job, parsed: GenerationRequest,
                          arrival: float) -> AsyncIterator[dict]:
        created, completion_tokens = self.created_now(), 0
        yield streaming.chat_chunk(request_id, created, model, 0, {"role": "assistant", "content": ""}, None)
        async for _, (text, output) in merge([self.run_job(job, arrival)]):
            completion_tokens += len(output.new_token_ids)
            if text:
                yield streaming.chat_chunk(request_id, created, model, 0, {"content": text}, None)
            if output.finished:
                yield streaming.chat_chunk(request_id, created, model, 0, {}, output.finish_reason)
        if parsed.include_usage:
            usage = streaming.usage(len(job.token_ids), completion_tokens)
            yield streaming.usage_chunk(request_id, created, model, "chat.completion.chunk", usage)

    def models(self) -> dict:
        return {"object": "list", "data": [self.model_card()]}

    def model_card(self) -> dict:
        return {"id": self.settings.served_model_name, "object": "model", "created": self.created,
                "owned_by": "aios", "max_model_len": self.max_model_len}

    def health(self) -> Response:
        engine = self.async_engine
        healthy = engine.healthy and not self.draining
        status = {"status": "draining" if self.draining else "ok" if engine.healthy else "unhealthy",
                  "engine_loop_running": engine.is_running,
                  "engine_steps": engine.num_steps, "engine_errors": engine.num_errors,
                  "consecutive_errors": engine.consecutive_errors, "last_error": engine.last_error,
                  "active_requests": engine.num_active_requests}
        return JSONResponse(status, status_code=200 if healthy else 503)

    @staticmethod
    def created_now() -> int:
        return int(time.time())


def build_app(async_engine: AsyncEngine, settings: ServerSettings, metrics: ServerMetrics | None = None) -> FastAPI:
    """The FastAPI app. Its lifespan starts the engine loop and, when the server stops, stops the
    loop and then the engine (its tensor-parallel workers, if any: none may outlive the server).

    ``app.state`` holds ``async_engine``, ``metrics``, ``settings`` and ``server`` (the OpenAIServer:
    launcher.AiosServer calls its ``begin_drain`` on SIGTERM).
    """
    metrics = metrics or ServerMetrics(async_engine)
    server = OpenAIServer(async_engine, settings, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        server.loop = asyncio.get_running_loop()
        async_engine.start()
        try:
            yield
        finally:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, async_engine.shutdown)
            await loop.run_in_executor(None, async_engine.engine.shutdown)

    app = FastAPI(title="AIOS OpenAI-compatible server", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json")
    app.state.async_engine, app.state.metrics, app.state.settings = async_engine, metrics, settings
    app.state.server = server

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, error: APIError):
        return error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException):
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return error_response(APIError(error.status_code, str(error.detail), kind))

    @app.exception_handler(ConnectionAbortedError)
    async def on_disconnect(request: Request, error: ConnectionAbortedError):
        return JSONResponse({"error": {"message": "client closed the request", "type": "client_closed",
                                       "param": None, "code": None}}, status_code=499)

    app.add_middleware(GuardMiddleware, settings=settings, metrics=metrics, server=server)

    def json_body(schema: dict) -> dict:
        return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}

    app.post("/v1/completions", openapi_extra=json_body(COMPLETION_REQUEST_SCHEMA))(server.completions)
    app.post("/v1/chat/completions", openapi_extra=json_body(CHAT_REQUEST_SCHEMA))(server.chat_completions)

    @app.get("/v1/models")
    async def list_models():
        return server.models()

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        if model_id != settings.served_model_name:
            raise APIError(404, f"The model '{model_id}' does not exist", "invalid_request_error", "model",
                           "model_not_found")
        return server.model_card()

    @app.get("/health")
    async def health():
        return server.health()

    @app.get("/metrics")
    async def prometheus_metrics():
        return PlainTextResponse(metrics.render(), media_type=metrics.content_type)

    return app


KNOWN_PATHS = {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/openapi.json"}


class GuardMiddleware:
    """Everything every request passes first: API key and its limits, draining, metrics, unexpected errors.

    /v1 paths need a known key (when the server has any) within its limits (429 and Retry-After
    otherwise), and get 503 while the server drains. Every answer is counted by endpoint and
    status. An exception no handler turned into an answer is logged once with the request's id
    and answered 500 (if nothing was sent yet). A plain ASGI middleware (not FastAPI's
    ``@app.middleware``), so that streamed responses and client disconnects pass through untouched.
    """

    def __init__(self, app, settings: ServerSettings, metrics: ServerMetrics, server: OpenAIServer):
        self.app = app
        self.metrics = metrics
        self.server = server
        self.keys = server.keys

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, request_id = scope["path"], uuid.uuid4().hex
        scope["aios.request_id"] = request_id
        endpoint = path if path in KNOWN_PATHS else "other"
        started = False

        async def counting_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                self.metrics.http_requests.labels(endpoint=endpoint, status=str(message["status"])).inc()
            await send(message)

        try:
            key = self.admit(Headers(scope=scope)) if path.startswith("/v1/") else None
        except APIError as refused:
            await error_response(refused)(scope, receive, counting_send)
            return
        scope["aios.api_key"] = key
        try:
            await self.app(scope, receive, counting_send)
        except Exception as exc:  # noqa: BLE001 - a bug: answer it, count it, log it once
            logger.error("request %s (%s %s) failed: %s: %s", request_id, scope.get("method"), path,
                         type(exc).__name__, exc, exc_info=exc)
            if not started:
                error = APIError(500, f"internal server error (request id {request_id})", "internal_server_error")
                await error_response(error)(scope, receive, counting_send)
        finally:
            if key is not None:
                self.keys.release(key, scope.get("aios.api_key_count", 1))

    def admit(self, headers: Headers) -> APIKey | None:
        """Check a /v1 request's key and count it against the key's limits (APIError if refused)."""
        if self.server.draining:
            raise APIError(503, "the server is shutting down", "service_unavailable", None, "server_shutting_down")
        if not self.keys.keys:
            return None
        scheme, _, token = headers.get("authorization", "").partition(" ")
        key = self.keys.find(token.strip()) if scheme.lower() == "bearer" else None
        if key is None:
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           "authentication_error", None, "invalid_api_key")
        try:
            self.keys.acquire(key)
        except LimitExceeded as exceeded:
            raise limit_error(exceeded, key) from None
        return key


def limit_error(exceeded: LimitExceeded, key: APIKey) -> APIError:
    """The 429 (with Retry-After) of a key over its limits; logged by the key's name."""
    logger.info("refused a request of key %r: %s", key.name, exceeded)
    return APIError(429, f"{exceeded}; retry after {exceeded.retry_after} s", "rate_limit_error", None,
                    "rate_limit_exceeded", {"Retry-After": str(exceeded.retry_after)})
