"""Lesson 15: turning an OpenAI request into SamplingParams, and framing Server-Sent Events."""

import json

import pytest

from aios.sampling_params import SamplingParams
from aios.server.protocol import APIError, sampling_params_from_request
from aios.server.streaming import sse_event


def params(sampling, prompt_len=10, max_model_len=100, limit=50, default=16) -> SamplingParams:
    return sampling_params_from_request(sampling, prompt_len, max_model_len, limit, default)


@pytest.mark.hint(3)
def test_fields_map_to_sampling_params():
    """temperature, top_p, top_k, seed, ignore_eos and max_tokens are copied into SamplingParams."""
    sp = params({"temperature": 0.5, "top_p": 0.9, "top_k": 7, "seed": 3, "ignore_eos": True, "max_tokens": 20})
    assert isinstance(sp, SamplingParams)
    assert (sp.temperature, sp.top_p, sp.top_k, sp.seed, sp.ignore_eos, sp.max_tokens) == (0.5, 0.9, 7, 3, True, 20)


@pytest.mark.hint(3)
def test_missing_and_null_fields_get_openai_defaults():
    """A missing or null field means OpenAI's default: temperature 1, top_p 1, no top-k, no seed, max_tokens default."""
    for sampling in ({}, {"temperature": None, "top_p": None, "seed": None, "max_tokens": None}):
        sp = params(sampling, default=16)
        assert (sp.temperature, sp.top_p, sp.top_k, sp.seed, sp.ignore_eos, sp.max_tokens) == (1.0, 1.0, -1, None,
                                                                                               False, 16)


@pytest.mark.hint(3)
def test_no_default_max_tokens_means_what_still_fits():
    """default_max_tokens=None (chat) gives max_model_len - prompt_len, capped by the server's limit."""
    assert params({}, prompt_len=90, max_model_len=100, limit=50, default=None).max_tokens == 10
    assert params({}, prompt_len=10, max_model_len=100, limit=50, default=None).max_tokens == 50


@pytest.mark.parametrize("sampling,param", [
    ({"temperature": -0.5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 51}, "max_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_k": -3}, "top_k"),
])
@pytest.mark.hint(3)
def test_invalid_values_are_400_naming_the_field(sampling, param):
    """A bad sampling value is an APIError with status 400 whose ``param`` names the field."""
    with pytest.raises(APIError) as info:
        params(sampling)
    assert info.value.status == 400
    assert info.value.param == param
    assert info.value.body()["error"]["type"] == "invalid_request_error"


@pytest.mark.hint(3)
def test_prompt_plus_max_tokens_over_context_is_400():
    """prompt + max_tokens > max_model_len is refused with code context_length_exceeded."""
    with pytest.raises(APIError) as info:
        params({"max_tokens": 30}, prompt_len=80, max_model_len=100)
    assert info.value.status == 400 and info.value.code == "context_length_exceeded"
    with pytest.raises(APIError) as info:
        params({}, prompt_len=100, max_model_len=100, default=None)
    assert info.value.status == 400 and info.value.code == "context_length_exceeded"


def test_sse_event_frames_json_and_done():
    """sse_event(dict) is 'data: <json>' plus a blank line; sse_event('[DONE]') is 'data: [DONE]' plus a blank line."""
    payload = {"text": "two\nlines", "n": 1}
    event = sse_event(payload)
    assert event.startswith("data: ") and event.endswith("\n\n")
    assert event.count("\n") == 2, "the JSON must sit on one line"
    assert json.loads(event[len("data: "):]) == payload
    assert sse_event("[DONE]") == "data: [DONE]\n\n"
