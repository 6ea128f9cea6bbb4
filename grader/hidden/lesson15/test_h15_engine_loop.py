"""Lesson 15 (hidden): the engine loop — per-request queues fed from the engine thread, and aborts."""

import time
from pathlib import Path

import pytest

from aios import LLM, SamplingParams
from aios.config import features_up_to
from aios.engine.llm_engine import LLMEngine
from aios.server.async_engine import AsyncEngine, RequestOutput, RequestStream

OPTIONS = {**features_up_to(15), "attention_backend": "auto", "num_kvcache_blocks": 128, "max_model_len": 256}
PROMPTS = ["one two three", "a b c d e f", "hello there", "zebra"]


@pytest.fixture()
def helpers(learner_helper):
    """The code that runs beside the engine (its thread, its event loop): h15_helpers.py."""
    return learner_helper(Path(__file__).with_name("h15_helpers.py"))


@pytest.fixture(scope="module")
def offline_texts(tiny_model_dir):
    llm = LLM(str(tiny_model_dir), **OPTIONS)
    params = [SamplingParams(temperature=0, max_tokens=6 + 3 * i, ignore_eos=True) for i in range(len(PROMPTS))]
    return [out["token_ids"] for out in llm.generate(PROMPTS, params, use_tqdm=False)]


def run_loop(engine: LLMEngine, job):
    """Start an AsyncEngine on ``engine``, return ``job(async_engine)``, stop it."""
    async_engine = AsyncEngine(engine, poll_interval=0.2)
    async_engine.start()
    try:
        return job(async_engine)
    finally:
        async_engine.shutdown()


@pytest.mark.hint(6)
def test_concurrent_requests_get_their_own_tokens(tiny_model_dir, offline_texts, helpers):
    """Four concurrent generate() calls each receive exactly the tokens the offline engine produces for them."""
    engine = LLMEngine(str(tiny_model_dir), **OPTIONS)
    jobs = [(engine.tokenize(p), SamplingParams(temperature=0, max_tokens=6 + 3 * i, ignore_eos=True))
            for i, p in enumerate(PROMPTS)]
    results = run_loop(engine, lambda async_engine: helpers.run_concurrently(async_engine, jobs, 60))
    for outputs, expected in zip(results, offline_texts):
        assert [t for ids, _ in outputs for t in ids] == expected
        assert outputs[-1][1] == "length"
        assert all(reason is None for _, reason in outputs[:-1])
        assert len(outputs) == len(expected), "one output per step, one token each"
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


@pytest.mark.hint(2)
def test_abort_of_a_waiting_request(tiny_model_dir, helpers):
    """With room for one sequence, a second request waits; closing it early removes it and it never runs."""
    engine = LLMEngine(str(tiny_model_dir), **{**OPTIONS, "max_num_seqs": 1})
    engine.step = helpers.slowed(engine.step, 0.005)
    first_ids, second_ids = engine.tokenize("first"), engine.tokenize("second")
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    seen = run_loop(engine, lambda async_engine: helpers.abort_a_waiting_request(
        async_engine, engine, first_ids, second_ids, params, 60))
    assert not seen["second_done_early"], "the second request should still be waiting"
    assert seen["waiting"] == 1
    assert sum(len(ids) for ids, _ in seen["first_outputs"]) == 40
    assert engine.scheduler.is_finished()
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


@pytest.mark.hint(5)
def test_request_stream_put_wakes_the_event_loop_from_another_thread(helpers):
    """RequestStream.put called from a plain thread delivers the output to an awaiting coroutine promptly."""
    started = time.monotonic()
    got, closed = helpers.put_from_a_thread(RequestStream, SamplingParams(), RequestOutput([7], "stop"), 0.05)
    waited = time.monotonic() - started
    assert got.new_token_ids == [7] and got.finish_reason == "stop"
    assert waited < 2.0
    assert closed, "a finished output closes the stream"
