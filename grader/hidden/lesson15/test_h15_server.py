"""Lesson 15 (hidden): the server end to end — same text as the offline engine, batches, seeds, cancellation."""

import asyncio
import gc
import time
from pathlib import Path

import httpx
import pytest

from aios import LLM, SamplingParams
from aios.config import features_up_to

PROMPTS = ["Once upon a time", "In the beginning", "The weather today"]
# The server fixture's engine options (conftest.py), for an offline engine to compare with.
ENGINE_OPTIONS = {**features_up_to(15), "attention_backend": "auto", "num_kvcache_blocks": 256,
                  "max_num_seqs": 32, "max_model_len": 512}


def wait_until_idle(server, timeout=15.0):
    manager = server.engine.block_manager
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.async_engine.num_active_requests == 0 and manager.num_free_blocks == manager.num_blocks:
            return True
        time.sleep(0.02)
    return False


@pytest.fixture(scope="module")
def offline(tiny_model_dir):
    llm = LLM(str(tiny_model_dir), **ENGINE_OPTIONS)
    return llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True), use_tqdm=False)


@pytest.mark.hint(6)
def test_server_text_equals_offline_engine(server, client, offline):
    """A greedy completion over HTTP has exactly the offline engine's text for the same prompt."""
    for prompt, expected in zip(PROMPTS, offline):
        result = client.completions.create(model=server.model, prompt=prompt, max_tokens=16, temperature=0,
                                           extra_body={"ignore_eos": True})
        assert result.choices[0].text == expected["text"]


@pytest.mark.hint(6)
def test_list_of_prompts_gives_one_choice_each(server, client, offline):
    """prompt=[p0, p1, p2] answers three choices, index i for prompt i, streamed or not."""
    result = client.completions.create(model=server.model, prompt=PROMPTS, max_tokens=16, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert [c.index for c in result.choices] == [0, 1, 2]
    assert [c.text for c in result.choices] == [o["text"] for o in offline]
    assert result.usage.completion_tokens == 48
    texts = ["", "", ""]
    for chunk in client.completions.create(model=server.model, prompt=PROMPTS, max_tokens=16, temperature=0,
                                           stream=True, extra_body={"ignore_eos": True}):
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert texts == [o["text"] for o in offline]


@pytest.mark.hint(6)
def test_token_id_prompt(server, client, offline):
    """A prompt given as token ids is the same request as its text."""
    ids = server.engine.tokenizer.encode(PROMPTS[0])
    result = client.completions.create(model=server.model, prompt=ids, max_tokens=16, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert result.choices[0].text == offline[0]["text"]
    assert result.usage.prompt_tokens == len(ids)


@pytest.mark.hint(6)
def test_seeded_sampling_is_reproducible(server, client):
    """Two sampled requests (temperature 1) with the same seed get the same text, streamed or not."""
    kwargs = dict(model=server.model, prompt=PROMPTS[1], max_tokens=12, temperature=1.0, seed=1234,
                  extra_body={"ignore_eos": True})
    first = client.completions.create(**kwargs).choices[0].text
    second = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kwargs))
    assert first == second


@pytest.mark.hint(6)
def test_stop_at_eos_reports_stop(server, client):
    """Without ignore_eos a request ends with 'stop' or 'length', never 'abort', and usage matches."""
    result = client.completions.create(model=server.model, prompt=PROMPTS[2], max_tokens=200, temperature=0)
    assert result.choices[0].finish_reason in ("stop", "length")
    assert 1 <= result.usage.completion_tokens <= 200


@pytest.mark.hint(2)
def test_non_streaming_client_timeout_aborts_request(server, monkeypatch, learner_helper):
    """A non-streamed request whose client gives up (timeout) is aborted: its blocks come back."""
    assert wait_until_idle(server)
    engine = server.engine
    helpers = learner_helper(Path(__file__).with_name("h15_helpers.py"))
    monkeypatch.setattr(engine, "step", helpers.slowed(engine.step, 0.01))
    aborted = server.metric("aios_requests_finished_total", finish_reason="abort")
    body = {"model": server.model, "prompt": PROMPTS[0], "max_tokens": 400, "temperature": 0, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.base_url + "/v1/completions", json=body, timeout=httpx.Timeout(5.0, read=0.5))
    assert wait_until_idle(server), "the abandoned request still holds KV blocks"
    assert server.metric("aios_requests_finished_total", finish_reason="abort") == aborted + 1


@pytest.mark.hint(2)
def test_many_clients_cancelling_midway(server):
    """16 streams of which every other one is cancelled after its first chunk: the rest finish, all blocks return."""

    async def one(client, i):
        stream = await client.completions.create(model=server.model, prompt=f"{PROMPTS[i % 3]} {i}",
                                                 max_tokens=24, temperature=0, stream=True,
                                                 extra_body={"ignore_eos": True})
        chunks = 0
        async for chunk in stream:
            chunks += 1
            if i % 2 and chunks == 1:
                await stream.close()
                return None
            reason = chunk.choices[0].finish_reason
        return reason

    async def main():
        async with server.async_client() as client:
            return await asyncio.wait_for(
                asyncio.gather(*(one(client, i) for i in range(16)), return_exceptions=True), 120)

    reasons = asyncio.run(main())
    gc.collect()  # close abandoned streams now, not in the middle of pytest's report
    errors = [r for r in reasons if isinstance(r, BaseException)]
    assert not errors, f"{len(errors)} request(s) failed, first: {errors[0]!r}"
    assert reasons[0::2] == ["length"] * 8
    assert wait_until_idle(server)
