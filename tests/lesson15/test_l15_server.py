"""Lesson 15: the OpenAI-compatible server, driven by the official ``openai`` client.

Every request here is greedy (temperature 0), so the same prompt always gives the same text.
"""

import asyncio
import gc
import time
from pathlib import Path

import openai
import pytest

PROMPT = "The quick brown fox"
HELPERS = Path(__file__).with_name("l15_helpers.py")


@pytest.mark.hint(6)
def test_completion(server, client):
    """POST /v1/completions returns text, finish_reason 'length' and usage with the right token counts."""
    result = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=12, temperature=0,
                                       extra_body={"ignore_eos": True})
    choice = result.choices[0]
    assert result.object == "text_completion" and result.model == server.model
    assert choice.finish_reason == "length" and choice.text
    assert result.usage.completion_tokens == 12
    assert result.usage.prompt_tokens == len(server.engine.tokenizer.encode(PROMPT))
    assert result.usage.total_tokens == result.usage.prompt_tokens + 12


@pytest.mark.hint(6)
def test_streamed_chunks_reassemble_to_the_completion(server, client):
    """stream=True: the chunks' text concatenated equals the non-streamed text, and the last chunk says why it ended."""
    whole = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=20, temperature=0,
                                      extra_body={"ignore_eos": True})
    chunks = list(client.completions.create(model=server.model, prompt=PROMPT, max_tokens=20, temperature=0,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}))
    text_chunks = [c for c in chunks if c.choices]
    assert len(text_chunks) > 1, "the answer should arrive in several pieces"
    assert "".join(c.choices[0].text for c in text_chunks) == whole.choices[0].text
    assert text_chunks[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in text_chunks[:-1])
    assert chunks[-1].usage.completion_tokens == 20


@pytest.mark.hint(6)
def test_chat_completion_and_stream(server, client):
    """/v1/chat/completions answers an assistant message; streamed deltas add up to the same content."""
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    whole = client.chat.completions.create(model=server.model, messages=messages, max_tokens=10, temperature=0,
                                           extra_body={"ignore_eos": True})
    message = whole.choices[0].message
    assert message.role == "assistant" and whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 10
    template = server.engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert whole.usage.prompt_tokens == len(server.engine.tokenizer.encode(template, add_special_tokens=False))
    stream = client.chat.completions.create(model=server.model, messages=messages, max_tokens=10, temperature=0,
                                            stream=True, extra_body={"ignore_eos": True})
    deltas = list(stream)
    assert deltas[0].choices[0].delta.role == "assistant"
    assert "".join(d.choices[0].delta.content or "" for d in deltas) == message.content
    assert deltas[-1].choices[0].finish_reason == "length"


@pytest.mark.hint(3)
def test_bad_sampling_values_are_400_and_server_keeps_serving(server, client):
    """Invalid temperature, top_p or max_tokens get a 400 naming the field; the next request still works."""
    for fields, param in (({"temperature": -1}, "temperature"), ({"top_p": 2}, "top_p"),
                          ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": 10_000}, "max_tokens")):
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model=server.model, prompt=PROMPT, **fields)
        assert info.value.status_code == 400
        assert info.value.body["param"] == param, info.value.body
    ok = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=3, temperature=0)
    assert ok.choices[0].finish_reason in ("length", "stop")


@pytest.mark.hint(3)
def test_prompt_longer_than_context_is_400(server, client):
    """A prompt that leaves no room in max_model_len is a 400 with code context_length_exceeded."""
    too_long = [5] * server.engine.config.max_model_len
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=server.model, prompt=too_long, max_tokens=4)
    assert info.value.code == "context_length_exceeded"


def wait_until_idle(server, timeout=15.0):
    """Wait until the engine holds no request and every KV block is free; returns whether that happened."""
    manager = server.engine.block_manager
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.async_engine.num_active_requests == 0 and manager.num_free_blocks == manager.num_blocks:
            return True
        time.sleep(0.02)
    return False


@pytest.mark.hint(2)
def test_disconnect_cancels_request_and_frees_blocks(server, client, monkeypatch, learner_helper):
    """Closing a stream mid-way aborts the request: its KV blocks return and the abort is counted."""
    assert wait_until_idle(server), "the server should start this test idle"
    engine = server.engine
    # Make the request last long enough to be cancelled mid-way.
    monkeypatch.setattr(engine, "step", learner_helper(HELPERS).slowed(engine.step, 0.01))
    aborted_before = server.metric("aios_requests_finished_total", finish_reason="abort")
    stream = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=400, temperature=0,
                                       stream=True, extra_body={"ignore_eos": True})
    received = 0
    for chunk in stream:
        received += 1
        if received == 3:
            assert engine.block_manager.num_free_blocks < engine.block_manager.num_blocks
            break
    stream.close()
    assert wait_until_idle(server), (
        f"blocks not freed: {engine.block_manager.num_free_blocks} of {engine.block_manager.num_blocks} free, "
        f"{server.async_engine.num_active_requests} active request(s)")
    assert server.metric("aios_requests_finished_total", finish_reason="abort") == aborted_before + 1


@pytest.mark.hint(6)
def test_32_concurrent_streams_all_complete(server):
    """32 concurrent streaming clients each get exactly max_tokens tokens, and the same text as a plain request."""
    prompts = [f"Request number {i}: tell me about {word}" for i, word in
               enumerate(["rivers", "stones", "clouds", "engines"] * 8)]
    lengths = [8 + 4 * (i % 5) for i in range(len(prompts))]

    async def stream_one(client, prompt, max_tokens):
        stream = await client.completions.create(model=server.model, prompt=prompt, max_tokens=max_tokens,
                                                 temperature=0, stream=True, stream_options={"include_usage": True},
                                                 extra_body={"ignore_eos": True})
        text, usage, reason = "", None, None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].text
                reason = chunk.choices[0].finish_reason or reason
            usage = chunk.usage or usage
        return text, usage.completion_tokens, reason

    async def plain_one(client, prompt, max_tokens):
        result = await client.completions.create(model=server.model, prompt=prompt, max_tokens=max_tokens,
                                                 temperature=0, extra_body={"ignore_eos": True})
        return result.choices[0].text

    async def run():
        async with server.async_client() as client:
            streamed = await asyncio.wait_for(asyncio.gather(
                *(stream_one(client, p, n) for p, n in zip(prompts, lengths)), return_exceptions=True), timeout=120)
            plain = await asyncio.wait_for(asyncio.gather(
                *(plain_one(client, p, n) for p, n in zip(prompts, lengths)), return_exceptions=True), timeout=120)
        return streamed, plain

    streamed, plain = asyncio.run(run())
    gc.collect()  # close abandoned streams now, not in the middle of pytest's report
    errors = [r for r in streamed + plain if isinstance(r, BaseException)]
    assert not errors, f"{len(errors)} of 64 requests failed, first: {errors[0]!r}"
    for (text, num_tokens, reason), expected_text, max_tokens in zip(streamed, plain, lengths):
        assert num_tokens == max_tokens and reason == "length"
        assert text == expected_text
    assert wait_until_idle(server)
