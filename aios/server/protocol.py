"""The OpenAI wire format: errors, request checking, and turning a request into SamplingParams.

Every request body is a JSON object. This module checks it field by field and
answers mistakes the way OpenAI's API does, with an HTTP status and a body like

    {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": null}}

The body is parsed with limits first (``parse_json``: nesting depth, number length,
finite numbers, no lone surrogates), so that hostile JSON is a 400 and never reaches
the tokenizer or the engine.

Fields fall into three groups: the ones the engine serves (``prompt``,
``messages``, ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stream``, and
the extensions ``top_k``, ``ignore_eos`` and ``priority`` that vLLM also accepts); OpenAI
fields the engine does not implement (``n``, ``stop``, ``logprobs``, penalties,
...), accepted only at their "off" value and otherwise refused by name; and
anything else, refused as unrecognized.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from aios.sampling_params import SamplingParams

# ---------------------------------------------------------------- errors


class APIError(Exception):
    """An error answered to the client as OpenAI-style JSON with an HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.headers = headers  # extra response headers (Retry-After of a 429)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


# ---------------------------------------------------------------- parsing JSON with limits

#: Deepest nesting of arrays and objects a body may have (a chat request needs 4).
MAX_JSON_DEPTH = 16
#: Longest number literal: seeds need 20 digits; a 400-digit integer is an attack, not a setting.
MAX_NUMBER_CHARS = 40


def _parse_number(text: str, convert):
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"a number has {len(text)} characters; at most {MAX_NUMBER_CHARS} are allowed")
    value = convert(text)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"the number {text} is out of range")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_json(raw: bytes) -> dict:
    """The request body as a JSON object, or APIError(400, code "invalid_json").

    Refuses what the standard parser lets through: NaN and Infinity, numbers too long
    (Python's int size limit would raise) or out of a float's range, nesting deeper than
    MAX_JSON_DEPTH, and strings (keys too) holding lone UTF-16 surrogates like "\\ud800",
    which cannot be encoded as UTF-8 (the tokenizer would fail on them).
    """
    try:
        body = json.loads(raw, parse_int=lambda t: _parse_number(t, int),
                          parse_float=lambda t: _parse_number(t, float), parse_constant=_no_constant)
        check_json_value(body)
    except RecursionError:
        raise bad_request(f"the request body is nested too deeply (at most {MAX_JSON_DEPTH} levels)",
                          code="invalid_json") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
        raise bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    return body


def check_json_value(value) -> None:
    """Raise ValueError for nesting deeper than MAX_JSON_DEPTH or a string that is not valid Unicode text."""
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            if not _encodable(item):
                raise ValueError("a string holds a lone UTF-16 surrogate (not valid Unicode text)")
        elif isinstance(item, (list, dict)):
            if depth >= MAX_JSON_DEPTH:
                raise ValueError(f"nesting deeper than {MAX_JSON_DEPTH} levels")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ---------------------------------------------------------------- fields

#: A list of prompts becomes that many engine requests; more than this in one body is refused.
MAX_PROMPTS_PER_REQUEST = 256

#: Fields every generation request may carry and the engine serves.
SERVED_FIELDS = {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stream", "stream_options",
                 "ignore_eos", "user", "priority"}

#: ``priority`` (lower is served earlier, as in vLLM) must lie in this range.
PRIORITY_RANGE = (-(2**31), 2**31 - 1)

#: OpenAI fields the engine does not implement -> the values that mean "feature off" (accepted and ignored).
UNSUPPORTED_COMPLETION_FIELDS = {
    "n": (None, 1), "best_of": (None, 1), "echo": (None, False), "stop": (None, [], ""), "logprobs": (None,),
    "presence_penalty": (None, 0), "frequency_penalty": (None, 0), "logit_bias": (None, {}), "suffix": (None, ""),
}
UNSUPPORTED_CHAT_FIELDS = {
    "n": (None, 1), "stop": (None, [], ""), "logprobs": (None, False), "top_logprobs": (None, 0),
    "presence_penalty": (None, 0), "frequency_penalty": (None, 0), "logit_bias": (None, {}),
    "response_format": (None, {"type": "text"}), "tools": (None, []), "tool_choice": (None, "none", "auto"),
    "parallel_tool_calls": (None, True, False), "metadata": (None,), "store": (None, False),
}


def check_fields(body: dict, served: set[str], unsupported: dict[str, tuple]) -> None:
    """Refuse unknown fields, and unsupported ones that are not at their "off" value (400, naming the field)."""
    for name, value in body.items():
        if name in served:
            continue
        if name in unsupported:
            if any(_same(value, off) for off in unsupported[name]):
                continue
            raise bad_request(f"'{name}' is not supported by this server (got {value!r})", param=name,
                              code="unsupported_parameter")
        raise bad_request(f"Unrecognized request argument supplied: {name}", param=name,
                          code="unrecognized_argument")


def _same(value, off) -> bool:
    """``value == off`` without counting true as 1 or false as 0."""
    return value == off and isinstance(value, bool) == isinstance(off, bool)


def check_user(body: dict) -> None:
    """``user`` (an end-user id for abuse tracking, which this server only accepts) must be a string."""
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad_request(f"'user' must be a string, got {user!r}", param="user")


def check_model(body: dict, served_model_name: str) -> None:
    """The ``model`` field must name the model this server serves (404 otherwise, like OpenAI)."""
    model = body.get("model")
    if model is None:
        raise bad_request("you must provide a model parameter", param="model")
    if not isinstance(model, str):
        raise bad_request(f"'model' must be a string, got {model!r}", param="model")
    if model != served_model_name:
        raise APIError(404, f"The model '{model}' does not exist; this server serves '{served_model_name}'",
                       "invalid_request_error", "model", "model_not_found")


def _stream_flags(body: dict) -> tuple[bool, bool]:
    """(stream, include_usage) from ``stream`` and ``stream_options``."""
    stream = body.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_request(f"'stream' must be true or false, got {stream!r}", param="stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise bad_request("'stream_options' is only allowed when 'stream' is true", param="stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise bad_request("'stream_options' must be an object with only 'include_usage'", param="stream_options")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise bad_request("'stream_options.include_usage' must be true or false", param="stream_options")
    return stream, include_usage


# ---------------------------------------------------------------- parsed requests


@dataclass
class GenerationRequest:
    """A checked request: one or more prompts (text or token ids) and how to stream them.

    ``sampling`` holds the raw sampling fields; ``sampling_params_from_request`` turns them
    into SamplingParams once the prompt's length is known. Its errors name ``prompt`` and
    ``max_tokens``; ``param_names`` says what the client called them (``rename_param``).
    """

    prompts: list[str | list[int]]
    stream: bool = False
    include_usage: bool = False
    sampling: dict = field(default_factory=dict)
    priority: int = 0
    #: the client's name of a field whose errors name it otherwise (chat: "prompt" -> "messages")
    param_names: dict[str, str] = field(default_factory=dict)


def _priority(body: dict) -> int:
    """The request's ``priority`` (default 0; lower is admitted first)."""
    value = body.get("priority")
    if value is None:
        return 0
    low, high = PRIORITY_RANGE
    if not _integer(value) or not low <= value <= high:
        raise bad_request(f"'priority' must be an integer in [{low}, {high}], got {value!r}", param="priority")
    return value


def _is_token_list(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, int) and not isinstance(t, bool)
                                                           for t in value)


def parse_completion_request(body: dict, served_model_name: str) -> GenerationRequest:
    """Check a ``POST /v1/completions`` body. ``prompt`` is a string, a list of strings,
    a list of token ids or a list of token-id lists (one choice per prompt)."""
    check_fields(body, SERVED_FIELDS | {"prompt"}, UNSUPPORTED_COMPLETION_FIELDS)
    check_model(body, served_model_name)
    check_user(body)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompts = [prompt]
    elif _is_token_list(prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) or _is_token_list(p) for p in prompt):
        prompts = list(prompt)
    else:
        raise bad_request("'prompt' must be a string, a list of strings, a list of token ids "
                          "or a list of token-id lists (none of them empty)", param="prompt")
    if len(prompts) > MAX_PROMPTS_PER_REQUEST:
        raise bad_request(f"at most {MAX_PROMPTS_PER_REQUEST} prompts per request, got {len(prompts)}",
                          param="prompt")
    stream, include_usage = _stream_flags(body)
    sampling = {k: body[k] for k in ("max_tokens", "temperature", "top_p", "top_k", "seed", "ignore_eos")
                if k in body}
    return GenerationRequest(prompts, stream, include_usage, sampling, _priority(body))


def message_text(content, index: int) -> str:
    """A chat message's content as text: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise bad_request(f"messages[{index}].content must be a string or a list of text parts", param="messages")


def parse_chat_messages(messages) -> list[dict]:
    """Check ``messages`` and return them as ``[{"role": str, "content": str}, ...]``.

    A message holds exactly ``role`` and ``content``: the chat template would drop anything else
    (``name``, ``tool_calls``, ...), answering another conversation than the one sent.
    """
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list of {role, content} objects", param="messages")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad_request(f"messages[{i}] must be an object with a string 'role'", param="messages")
        if message["role"] not in ("system", "user", "assistant", "developer"):
            raise bad_request(f"messages[{i}].role {message['role']!r} is not supported "
                              "(use system, developer, user or assistant)", param="messages")
        if "content" not in message:
            raise bad_request(f"messages[{i}] has no 'content'", param="messages")
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            raise bad_request(f"messages[{i}].{extra[0]} is not supported by this server (a message has "
                              "only 'role' and 'content')", param="messages", code="unsupported_parameter")
        checked.append({"role": message["role"], "content": message_text(message["content"], i)})
    return checked


def parse_chat_request(body: dict, served_model_name: str) -> tuple[list[dict], GenerationRequest]:
    """Check a ``POST /v1/chat/completions`` body; returns (messages, request without prompts).

    ``max_completion_tokens`` (OpenAI's newer name) wins over ``max_tokens``.
    """
    check_fields(body, SERVED_FIELDS | {"messages", "max_completion_tokens"}, UNSUPPORTED_CHAT_FIELDS)
    check_model(body, served_model_name)
    check_user(body)
    messages = parse_chat_messages(body.get("messages"))
    stream, include_usage = _stream_flags(body)
    sampling = {k: body[k] for k in ("max_tokens", "temperature", "top_p", "top_k", "seed", "ignore_eos")
                if k in body}
    param_names = {"prompt": "messages"}
    if body.get("max_completion_tokens") is not None:
        sampling["max_tokens"] = body["max_completion_tokens"]
        param_names["max_tokens"] = "max_completion_tokens"
    return messages, GenerationRequest([], stream, include_usage, sampling, _priority(body), param_names)


def rename_param(error: APIError, param_names: dict[str, str]) -> APIError:
    """``error`` naming the field as the client sent it (``'max_tokens'`` -> ``'max_completion_tokens'``)."""
    name = param_names.get(error.param)
    if name is not None:
        error.message = error.message.replace(f"'{error.param}'", f"'{name}'")
        error.param = name
    return error


# ---------------------------------------------------------------- sampling


def _number(value) -> bool:
    """A JSON number that is a finite float (an integer too large for a float is not)."""
    try:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:
        return False


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def sampling_params_from_request(sampling: dict, prompt_len: int, max_model_len: int, max_tokens_limit: int,
                                 default_max_tokens: int | None = 16) -> SamplingParams:
    """Turn a request's sampling fields into SamplingParams, or raise APIError(400) naming the bad field.

    sampling:           the request's ``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``seed``
                        and ``ignore_eos`` (any may be missing or null: OpenAI's defaults then apply:
                        temperature 1, top_p 1, no top-k, no seed, stop at EOS).
    prompt_len:         tokens in the prompt.
    max_model_len:      the engine's context length: prompt + completion must fit in it.
    max_tokens_limit:   the most tokens one request may ask for (a server setting).
    default_max_tokens: used when ``max_tokens`` is missing; None means "whatever still fits"
                        (what the chat endpoint does), capped by ``max_tokens_limit``.
    """
    # Hint: null means "use the default", like a missing field.
    # Hint: check each field's JSON type here; SamplingParams checks the ranges (reuse its message).
    raise NotImplementedError("Lesson 15: implement sampling_params_from_request in aios/server/protocol.py — see exercises/lesson15/README.md, 'What to implement'")


# ---------------------------------------------------------------- the request bodies as JSON Schema

def _nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


_SERVED_SCHEMA = {
    "model": {"type": "string"},
    "max_tokens": _nullable({"type": "integer", "minimum": 1}),
    "temperature": _nullable({"type": "number", "minimum": 0}),
    "top_p": _nullable({"type": "number", "exclusiveMinimum": 0, "maximum": 1}),
    "top_k": _nullable({"type": "integer", "minimum": -1}),
    "seed": _nullable({"type": "integer", "minimum": 0, "maximum": 2**64 - 1}),
    "stream": _nullable({"type": "boolean"}),
    "stream_options": _nullable({"type": "object", "properties": {"include_usage": {"type": "boolean"}},
                                 "additionalProperties": False}),
    "ignore_eos": _nullable({"type": "boolean"}),
    "user": _nullable({"type": "string"}),
    "priority": _nullable({"type": "integer", "minimum": PRIORITY_RANGE[0], "maximum": PRIORITY_RANGE[1]}),
}
_TOKEN_IDS = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}

#: ``POST /v1/completions`` (published in the server's OpenAPI document, used by the fuzz tests).
COMPLETION_REQUEST_SCHEMA = {
    "type": "object", "required": ["model", "prompt"], "additionalProperties": False,
    "properties": {**_SERVED_SCHEMA, "prompt": {"anyOf": [
        {"type": "string"}, _TOKEN_IDS,
        {"type": "array", "minItems": 1, "maxItems": MAX_PROMPTS_PER_REQUEST,
         "items": {"anyOf": [{"type": "string"}, _TOKEN_IDS]}}]}},
}
#: ``POST /v1/chat/completions``.
CHAT_REQUEST_SCHEMA = {
    "type": "object", "required": ["model", "messages"], "additionalProperties": False,
    "properties": {**_SERVED_SCHEMA, "max_completion_tokens": _nullable({"type": "integer", "minimum": 1}),
                   "messages": {"type": "array", "minItems": 1, "items": {
                       "type": "object", "required": ["role", "content"], "additionalProperties": False,
                       "properties": {
                           "role": {"enum": ["system", "developer", "user", "assistant"]},
                           "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {
                               "type": "object", "required": ["type", "text"],
                               "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}}]}}}}},
}
