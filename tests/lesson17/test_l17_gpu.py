"""Lesson 17 on a GPU: the overlapped loop with everything on (Triton attention, CUDA graphs, pinned copies,
events) answers exactly as the synchronous loop, and the default turns it on. Skipped without CUDA."""

import random

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.hint(4)]


def engine(model_dir, overlap, **options):
    from aios import LLM
    from aios.config import features_up_to

    return LLM(str(model_dir), **{**features_up_to(17), "async_scheduling": overlap, "max_num_seqs": 16,
                                  "max_model_len": 512, "num_kvcache_blocks": 256, **options})


def workload(seed=0, n=12):
    from aios import SamplingParams

    rng = random.Random(seed)
    prompts = [[rng.randrange(3, 500) for _ in range(rng.randint(4, 200))] for _ in range(n)]
    params = [SamplingParams(temperature=0.0 if i % 3 else 0.8, seed=i, top_k=(-1, 20)[i % 2],
                             max_tokens=rng.randint(1, 40), ignore_eos=True) for i in range(n)]
    return prompts, params


@pytest.mark.parametrize("chunked", [False, True], ids=["prefill-first", "chunked"])
def test_same_tokens_with_graphs_and_triton(tiny_model_dir, chunked):
    """Greedy and seeded sampled requests, CUDA graphs and Triton on, with and without chunked prefill (budget 64):
    the overlapped loop's tokens equal the synchronous loop's."""
    options = {"enable_chunked_prefill": chunked, "max_num_batched_tokens": 64 if chunked else 512}
    prompts, params = workload(1)
    results = []
    for overlap in (False, True):
        llm = engine(tiny_model_dir, overlap, **options)
        assert not llm.config.enforce_eager and llm.model_runner.graphs
        results.append([out["token_ids"] for out in llm.generate(prompts, params, use_tqdm=False)])
        assert llm.block_manager.num_free_blocks == llm.block_manager.num_blocks
        llm.shutdown()
    assert results[1] == results[0]


def test_preemption_with_graphs(tiny_model_dir):
    """A KV cache of 24 blocks for 12 requests: preemptions, same tokens."""
    prompts, params = workload(2)
    results = []
    for overlap in (False, True):
        llm = engine(tiny_model_dir, overlap, num_kvcache_blocks=24, kvcache_block_size=16)
        results.append([out["token_ids"] for out in llm.generate(prompts, params, use_tqdm=False)])
        if overlap:
            assert llm.scheduler.num_preemptions > 0
        llm.shutdown()
    assert results[1] == results[0]


def test_the_default_is_on_for_cuda(tiny_model_dir):
    """async_scheduling=None resolves to True on a CUDA device, and the engine builds its AsyncLoop."""
    llm = engine(tiny_model_dir, None)
    assert llm.config.async_scheduling is True and llm.async_loop is not None
    llm.shutdown()
