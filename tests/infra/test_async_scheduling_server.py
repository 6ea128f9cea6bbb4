"""The server's engine loop (lesson 15) over the overlapped engine (lesson 17): streams, aborts and a failed step.

``step()`` returns the previous step's results, and between two steps no placeholder is visible,
so the loop's dispatch (completion tokens it has not sent yet) works unchanged; an abort between
two steps drops the aborted request's token in flight.
"""

import asyncio

import pytest

from aios import LLM, SamplingParams
from aios.config import features_up_to
from aios.server.async_engine import AsyncEngine

OPTIONS = {**features_up_to(17), "attention_backend": "torch", "num_kvcache_blocks": 64, "kvcache_block_size": 8,
           "max_model_len": 256, "max_num_batched_tokens": 16, "max_num_seqs": 4, "async_scheduling": True}
PROMPTS = [list(range(3, 153)), [5, 6, 7], [8, 9], [10, 11, 12, 13]]
PARAMS = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in (4, 12, 10, 8)]


@pytest.fixture(scope="module")
def expected(tiny_model_dir):
    offline = LLM(str(tiny_model_dir), **{**OPTIONS, "async_scheduling": False})
    return [out["token_ids"] for out in offline.generate(PROMPTS, PARAMS, use_tqdm=False)]


def serve(engine, consume):
    loop_engine = AsyncEngine(engine, poll_interval=0.2)
    loop_engine.start()

    async def run_all():
        return await asyncio.wait_for(asyncio.gather(*(consume(loop_engine, p, sp, i)
                                                       for i, (p, sp) in enumerate(zip(PROMPTS, PARAMS)))), 120)

    try:
        return asyncio.run(run_all())
    finally:
        loop_engine.shutdown()


@pytest.mark.parametrize("chunked", [True, False])
def test_streams_over_the_overlapped_engine_match_offline_generation(tiny_model_dir, expected, chunked):
    """Four concurrent requests stream exactly the synchronous engine's tokens; the engine ends with every block free."""
    options = OPTIONS if chunked else {**OPTIONS, "enable_chunked_prefill": False, "max_num_batched_tokens": 256}
    engine = LLM(str(tiny_model_dir), **options)

    async def collect(loop_engine, prompt, sp, _):
        return [output async for output in loop_engine.generate(prompt, sp)]

    for outputs, tokens in zip(serve(engine, collect), expected):
        assert [t for out in outputs for t in out.new_token_ids] == tokens
        assert outputs[-1].finish_reason == "length"
    assert engine.is_finished()
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_a_client_leaving_mid_stream_aborts_its_request(tiny_model_dir, expected):
    """A client that stops reading after two outputs aborts its request: it got a prefix of the answer, the others
    their full answers, and every block is free afterwards."""
    engine = LLM(str(tiny_model_dir), **OPTIONS)

    async def collect(loop_engine, prompt, sp, index):
        outputs = []
        async for output in loop_engine.generate(prompt, sp):
            outputs.append(output)
            if index == 1 and len(outputs) == 2:
                break
        return outputs

    results = serve(engine, collect)
    received = [[t for out in outputs for t in out.new_token_ids] for outputs in results]
    assert received[1] == expected[1][: len(received[1])] and len(received[1]) < len(expected[1])
    assert [received[i] for i in (0, 2, 3)] == [expected[i] for i in (0, 2, 3)]
    assert engine.is_finished()
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_a_failed_step_drops_the_step_in_flight(tiny_model_dir, expected):
    """After a step raises, forget_failed_step discards the step in flight and its placeholders: the requeued
    requests are recomputed and still give the synchronous engine's tokens."""
    engine = LLM(str(tiny_model_dir), **OPTIONS)
    seqs = [engine.add_request(p, sp) for p, sp in zip(PROMPTS, PARAMS)]
    for _ in range(12):
        engine.step()
    runner = engine.model_runner
    original = runner.run_model

    def broken(*args, **kwargs):
        raise RuntimeError("injected failure")

    runner.run_model = broken
    with pytest.raises(RuntimeError, match="injected"):
        engine.step()
    del runner.run_model
    assert runner.run_model == original
    engine.forget_failed_step()
    engine.requeue_running()
    for seq in seqs:
        assert -1 not in seq.token_ids
    for _ in range(500):
        if engine.is_finished():
            break
        engine.step()
    assert [seq.completion_token_ids for seq in seqs] == expected
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
