"""Lesson 15 (hidden): request checking and SamplingParams translation, more cases."""

import json
import math

import pytest

from aios.server.protocol import APIError, sampling_params_from_request
from aios.server.streaming import sse_event


def params(sampling, prompt_len=10, max_model_len=100, limit=50, default=16):
    return sampling_params_from_request(sampling, prompt_len, max_model_len, limit, default)


@pytest.mark.parametrize("sampling,param", [
    ({"max_tokens": True}, "max_tokens"),
    ({"max_tokens": 2.0}, "max_tokens"),
    ({"temperature": True}, "temperature"),
    ({"temperature": math.inf}, "temperature"),
    ({"temperature": math.nan}, "temperature"),
    ({"top_k": 2.5}, "top_k"),
    ({"top_k": True}, "top_k"),
    ({"seed": False}, "seed"),
    ({"seed": "7"}, "seed"),
    ({"seed": -1}, "seed"),
    ({"ignore_eos": "yes"}, "ignore_eos"),
    ({"top_p": -0.1}, "top_p"),
])
@pytest.mark.hint(3)
def test_wrong_types_and_ranges_are_400(sampling, param):
    """Booleans are not numbers, floats are not integers, inf/nan are refused: 400 naming the field."""
    with pytest.raises(APIError) as info:
        params(sampling)
    assert info.value.status == 400 and info.value.param == param


@pytest.mark.hint(3)
def test_greedy_and_limits_at_the_edge():
    """temperature 0 is greedy; max_tokens equal to the limit and filling the context exactly are accepted."""
    sp = params({"temperature": 0, "max_tokens": 50})
    assert sp.is_greedy and sp.max_tokens == 50
    assert params({"max_tokens": 10}, prompt_len=90, max_model_len=100).max_tokens == 10
    with pytest.raises(APIError):
        params({"max_tokens": 11}, prompt_len=90, max_model_len=100)


@pytest.mark.hint(3)
def test_default_max_tokens_must_also_fit():
    """The completions default (16) still has to fit: a prompt leaving 5 slots with no max_tokens is a 400."""
    with pytest.raises(APIError) as info:
        params({}, prompt_len=95, max_model_len=100, default=16)
    assert info.value.code == "context_length_exceeded"


@pytest.mark.hint(3)
def test_error_body_is_openai_shaped():
    """APIError.body() is {'error': {'message', 'type', 'param', 'code'}}."""
    with pytest.raises(APIError) as info:
        params({"top_p": 3})
    body = info.value.body()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "top_p" in body["error"]["message"]


def test_sse_event_keeps_unicode_and_is_compact():
    """Non-ASCII text goes through sse_event unchanged and the event is a single data line."""
    event = sse_event({"text": "日本 ✓"})
    assert json.loads(event.removeprefix("data: "))["text"] == "日本 ✓"
    assert event.endswith("\n\n") and "\n" not in event[:-2]
