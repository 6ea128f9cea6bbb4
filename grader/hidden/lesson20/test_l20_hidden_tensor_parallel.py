"""Lesson 20 hidden test: the engine with two tensor-parallel ranks (gloo) on the MoE model."""

import pytest

pytestmark = pytest.mark.timeout(180, method="thread")


@pytest.mark.hint(7)
def test_engine_with_two_ranks_generates_what_one_rank_does_on_moe(tiny_moe_dir):
    """LLM(tensor_parallel_size=2) on tiny-moe gives the greedy tokens of tensor_parallel_size=1."""
    from l20_helpers import ENGINE

    from aios import LLM
    from aios.config import features_up_to
    from aios.sampling_params import SamplingParams

    prompts = [[5, 6, 7, 8, 9], list(range(20, 45)), [11] * 9]
    params = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
    options = {**features_up_to(16), **ENGINE, "num_kvcache_blocks": 48}
    single = LLM(str(tiny_moe_dir), **options)
    expected = [out["token_ids"] for out in single.generate(prompts, params, use_tqdm=False)]
    llm = LLM(str(tiny_moe_dir), **options, tensor_parallel_size=2)
    try:
        assert [out["token_ids"] for out in llm.generate(prompts, params, use_tqdm=False)] == expected
    finally:
        llm.shutdown()
