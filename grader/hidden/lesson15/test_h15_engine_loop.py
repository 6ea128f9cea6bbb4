"""Lesson 15 (hidden): the engine loop — per-request queues fed from the engine thread, and aborts."""

import asyncio
import threading
import time

import pytest

from aios import LLM, SamplingParams
from aios.config import features_up_to
from aios.engine.llm_engine import LLMEngine
from aios.server.async_engine import AsyncEngine, RequestOutput, RequestStream

OPTIONS = {**features_up_to(15), "attention_backend": "auto", "num_kvcache_blocks": 128, "max_model_len": 256}
PROMPTS = ["one two three", "a b c d e f", "hello there", "zebra"]


@pytest.fixture(scope="module")
def offline_texts(tiny_model_dir):
    llm = LLM(str(tiny_model_dir), **OPTIONS)
    params = [SamplingParams(temperature=0, max_tokens=6 + 3 * i, ignore_eos=True) for i in range(len(PROMPTS))]
    return [out["token_ids"] for out in llm.generate(PROMPTS, params, use_tqdm=False)]


def run_loop(engine: LLMEngine, coroutine_factory, timeout=60):
    """Start an AsyncEngine on ``engine``, run ``coroutine_factory(async_engine)`` with a timeout, stop it."""
    async_engine = AsyncEngine(engine, poll_interval=0.2)
    async_engine.start()
    try:
        return asyncio.run(asyncio.wait_for(coroutine_factory(async_engine), timeout))
    finally:
        async_engine.shutdown()


async def collect(async_engine, token_ids, params):
    outputs = []
    async for output in async_engine.generate(token_ids, params):
        outputs.append(output)
    return outputs


@pytest.mark.hint(6)
def test_concurrent_requests_get_their_own_tokens(tiny_model_dir, offline_texts):
    """Four concurrent generate() calls each receive exactly the tokens the offline engine produces for them."""
    engine = LLMEngine(str(tiny_model_dir), **OPTIONS)
    jobs = [(engine.tokenize(p), SamplingParams(temperature=0, max_tokens=6 + 3 * i, ignore_eos=True))
            for i, p in enumerate(PROMPTS)]

    async def main(async_engine):
        return await asyncio.gather(*(collect(async_engine, ids, sp) for ids, sp in jobs))

    results = run_loop(engine, main)
    for outputs, expected in zip(results, offline_texts):
        assert [t for o in outputs for t in o.new_token_ids] == expected
        assert outputs[-1].finish_reason == "length"
        assert all(o.finish_reason is None for o in outputs[:-1])
        assert len(outputs) == len(expected), "one output per step, one token each"
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


@pytest.mark.hint(2)
def test_abort_of_a_waiting_request(tiny_model_dir):
    """With room for one sequence, a second request waits; closing it early removes it and it never runs."""
    engine = LLMEngine(str(tiny_model_dir), **{**OPTIONS, "max_num_seqs": 1})
    original_step = engine.step
    engine.step = lambda: (time.sleep(0.005), original_step())[1]
    first_ids, second_ids = engine.tokenize("first"), engine.tokenize("second")

    async def main(async_engine):
        first = asyncio.ensure_future(collect(async_engine, first_ids, SamplingParams(temperature=0, max_tokens=40,
                                                                                       ignore_eos=True)))
        second = async_engine.generate(second_ids, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
        waiter = asyncio.ensure_future(second.__anext__())
        await asyncio.sleep(0.2)
        assert not waiter.done(), "the second request should still be waiting"
        assert len(engine.scheduler.waiting) == 1
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        await second.aclose()
        outputs = await first
        return outputs

    outputs = run_loop(engine, main)
    assert sum(len(o.new_token_ids) for o in outputs) == 40
    assert engine.scheduler.is_finished()
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


@pytest.mark.hint(5)
def test_request_stream_put_wakes_the_event_loop_from_another_thread():
    """RequestStream.put called from a plain thread delivers the output to an awaiting coroutine promptly."""

    async def main():
        stream = RequestStream([1], SamplingParams(), asyncio.get_running_loop())
        output = RequestOutput([7], "stop")
        threading.Timer(0.05, stream.put, args=(output,)).start()
        started = time.monotonic()
        got = await asyncio.wait_for(stream.queue.get(), timeout=5)
        return got, time.monotonic() - started, stream.closed

    got, waited, closed = asyncio.run(main())
    assert got.new_token_ids == [7] and got.finish_reason == "stop"
    assert waited < 2.0
    assert closed, "a finished output closes the stream"
