"""The OpenAI-compatible HTTP API: a FastAPI app in front of an AsyncEngine.

    POST /v1/completions        text in, text out (``stream: true`` for Server-Sent Events)
    POST /v1/chat/completions   messages in (the checkpoint's chat template), an assistant message out
    GET  /v1/models             the one model this server serves
    GET  /health                200 while the engine loop runs and its steps succeed, else 503
    GET  /metrics               Prometheus text format (see aios.server.metrics)

A request's path: read and check the JSON body (protocol.py), tokenize the prompt,
turn its fields into SamplingParams, submit it to the engine loop (async_engine.py),
then either collect every token and answer once, or stream text pieces as they come
(streaming.py). The tokenizer is only used here, on the event loop's thread; the
engine thread only sees token ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from aios.engine.llm_engine import RequestError
from aios.server import streaming
from aios.server.async_engine import AsyncEngine, EngineError, RequestOutput
from aios.server.metrics import RequestTimer, ServerMetrics
from aios.server.protocol import (APIError, GenerationRequest, bad_request, parse_chat_request,
                                  parse_completion_request, sampling_params_from_request)

#: Default ``max_tokens`` of /v1/completions when the request gives none (OpenAI's default).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


@dataclass
class ServerSettings:
    """How the server answers, apart from the engine's own options.

    served_model_name: the id clients put in ``model`` (``aios serve`` uses the checkpoint folder's name).
    api_key:           when set, every /v1 request needs ``Authorization: Bearer <api_key>``.
    max_body_bytes:    larger request bodies get 413.
    max_tokens_limit:  the most ``max_tokens`` one request may ask for (default: the context length).
    """

    served_model_name: str
    api_key: str | None = None
    max_body_bytes: int = 4 * 1024 * 1024
    max_tokens_limit: int | None = None


@dataclass
class Job:
    """One prompt of a request, ready for the engine."""

    token_ids: list[int]
    params: object  # SamplingParams


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


async def read_json_body(request: Request, limit: int) -> dict:
    """The request body as a JSON object: 413 when it is larger than ``limit`` bytes, 400 when it is not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body has {declared} bytes; the limit is {limit}",
                       "invalid_request_error", None, "request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"the request body is larger than the limit of {limit} bytes",
                           "invalid_request_error", None, "request_too_large")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    return body


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
        self.max_model_len = self.engine.config.max_model_len
        self.max_tokens_limit = settings.max_tokens_limit or self.max_model_len - 1
        self.created = int(time.time())

    # ------------------------------------------------------------ preparing requests

    def make_job(self, prompt: str | list[int], sampling: dict, default_max_tokens: int | None) -> Job:
        """Tokenize one prompt, build its SamplingParams and check the engine can serve it (400 otherwise)."""
        token_ids = self.engine.tokenize(prompt)
        if not token_ids:
            raise bad_request("the prompt is empty", param="prompt")
        params = sampling_params_from_request(sampling, len(token_ids), self.max_model_len,
                                              self.max_tokens_limit, default_max_tokens)
        try:
            self.engine.check_request(token_ids, params)
        except RequestError as error:
            raise bad_request(str(error), param="prompt") from None
        return Job(token_ids, params)

    def chat_prompt(self, messages: list[dict]) -> str:
        """The checkpoint's chat template applied to ``messages``, ending with the assistant's turn."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise bad_request("this model has no chat template; use /v1/completions", param="messages")
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
            async with contextlib.aclosing(self.async_engine.generate(job.token_ids, job.params)) as outputs:
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
            raise APIError(500, str(error), "internal_server_error", None, "engine_error") from None

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    async def sse(self, events: AsyncIterator[dict]) -> AsyncIterator[str]:
        """Frame ``events`` as SSE, then ``[DONE]``; an engine failure becomes an error event."""
        try:
            async for event in events:
                yield streaming.sse_event(event)
        except EngineError as error:
            yield streaming.sse_event(APIError(500, str(error), "internal_server_error", None,
                                               "engine_error").body())
        yield streaming.sse_event("[DONE]")

    # ------------------------------------------------------------ endpoints

    async def completions(self, request: Request) -> Response:
        arrival = time.perf_counter()
        body = await read_json_body(request, self.settings.max_body_bytes)
        parsed = parse_completion_request(body, self.settings.served_model_name)
        jobs = [self.make_job(p, parsed.sampling, COMPLETIONS_DEFAULT_MAX_TOKENS) for p in parsed.prompts]
        request_id, model = f"cmpl-{uuid.uuid4().hex}", self.settings.served_model_name
        if parsed.stream:
            events = self.completion_events(request_id, model, jobs, parsed, arrival)
            return StreamingResponse(self.sse(events), media_type="text/event-stream",
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
        body = await read_json_body(request, self.settings.max_body_bytes)
        messages, parsed = parse_chat_request(body, self.settings.served_model_name)
        prompt_ids = self.tokenizer.encode(self.chat_prompt(messages), add_special_tokens=False)
        job = self.make_job(prompt_ids, parsed.sampling, default_max_tokens=None)
        request_id, model = f"chatcmpl-{uuid.uuid4().hex}", self.settings.served_model_name
        if parsed.stream:
            events = self.chat_events(request_id, model, job, parsed, arrival)
            return StreamingResponse(self.sse(events), media_type="text/event-stream",
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
        status = {"status": "ok" if engine.healthy else "unhealthy", "engine_loop_running": engine.is_running,
                  "engine_steps": engine.num_steps, "engine_errors": engine.num_errors,
                  "consecutive_errors": engine.consecutive_errors, "last_error": engine.last_error,
                  "active_requests": engine.num_active_requests}
        return JSONResponse(status, status_code=200 if engine.healthy else 503)

    @staticmethod
    def created_now() -> int:
        return int(time.time())


def build_app(async_engine: AsyncEngine, settings: ServerSettings, metrics: ServerMetrics | None = None) -> FastAPI:
    """The FastAPI app. Its lifespan starts the engine loop and, when the server stops, stops the
    loop and then the engine (its tensor-parallel workers, if any: none may outlive the server).

    ``app.state`` holds ``async_engine``, ``metrics`` and ``settings`` (the tests look at them).
    """
    metrics = metrics or ServerMetrics(async_engine)
    server = OpenAIServer(async_engine, settings, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async_engine.start()
        try:
            yield
        finally:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, async_engine.shutdown)
            await loop.run_in_executor(None, async_engine.engine.shutdown)

    app = FastAPI(title="AIOS OpenAI-compatible server", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.async_engine, app.state.metrics, app.state.settings = async_engine, metrics, settings

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

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, error: Exception):
        return error_response(APIError(500, f"internal server error: {type(error).__name__}: {error}",
                                       "internal_server_error"))

    app.add_middleware(AuthAndMetricsMiddleware, settings=settings, metrics=metrics)

    app.post("/v1/completions")(server.completions)
    app.post("/v1/chat/completions")(server.chat_completions)

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


KNOWN_PATHS = {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"}


class AuthAndMetricsMiddleware:
    """Checks the API key on /v1 paths and counts every answer by endpoint and status.

    A plain ASGI middleware (not FastAPI's ``@app.middleware``), so that streamed
    responses and client disconnects pass through it untouched.
    """

    def __init__(self, app, settings: ServerSettings, metrics: ServerMetrics):
        self.app = app
        self.settings = settings
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = path if path in KNOWN_PATHS else "other"

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.metrics.http_requests.labels(endpoint=endpoint, status=str(message["status"])).inc()
            await send(message)

        api_key = self.settings.api_key
        if api_key and path.startswith("/v1/") and not _authorized(Headers(scope=scope), api_key):
            response = error_response(APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                               "authentication_error", None, "invalid_api_key"))
            await response(scope, receive, counting_send)
            return
        await self.app(scope, receive, counting_send)


def _authorized(headers: Headers, api_key: str) -> bool:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())
