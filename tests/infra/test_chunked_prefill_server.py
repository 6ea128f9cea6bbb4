"""The server's engine loop (lesson 15) over a chunked-prefill engine (lesson 16): every stream gets its tokens.

A request in the middle of its prompt gains no token in a step, so the loop must send it nothing
then, and the short requests must keep streaming while a long prompt is prefilled beside them.
"""

import asyncio

from aios import LLM, SamplingParams
from aios.config import features_up_to
from aios.server.async_engine import AsyncEngine

OPTIONS = {**features_up_to(16), "attention_backend": "torch", "num_kvcache_blocks": 64, "kvcache_block_size": 8,
           "max_model_len": 256, "max_num_batched_tokens": 16, "max_num_seqs": 4}


def test_streams_over_a_chunked_engine_match_offline_generation(tiny_model_dir):
    """A 150-token prompt and three short ones, submitted concurrently, stream exactly the offline tokens."""
    prompts = [list(range(3, 153)), [5, 6, 7], [8, 9], [10, 11, 12, 13]]
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in (4, 12, 10, 8)]
    offline = LLM(str(tiny_model_dir), **{**OPTIONS, "enable_chunked_prefill": False,
                                          "max_num_batched_tokens": 256})
    expected = [out["token_ids"] for out in offline.generate(prompts, params, use_tqdm=False)]

    engine = LLM(str(tiny_model_dir), **OPTIONS)
    loop_engine = AsyncEngine(engine, poll_interval=0.2)
    loop_engine.start()

    async def collect(prompt, sp):
        chunks = [output async for output in loop_engine.generate(prompt, sp)]
        return chunks

    async def run_all():
        return await asyncio.wait_for(asyncio.gather(*(collect(p, sp) for p, sp in zip(prompts, params))), 120)

    try:
        results = asyncio.run(run_all())
    finally:
        loop_engine.shutdown()
    for outputs, tokens in zip(results, expected):
        assert [t for out in outputs for t in out.new_token_ids] == tokens
        assert outputs[-1].finish_reason == "length"
        assert all(out.new_token_ids for out in outputs), "a step that gave a request no token must send it nothing"
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
