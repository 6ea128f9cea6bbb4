"""Lesson 9 (hidden): the Triton backend inside the engine, under memory pressure."""

from aios.config import features_up_to
from aios.llm import LLM
from aios.sampling_params import SamplingParams


def generate(model_dir, backend: str) -> tuple[list[list[int]], int]:
    options = {**features_up_to(9), "attention_backend": backend}
    llm = LLM(model_dir, **options, max_num_seqs=3, max_model_len=64, kvcache_block_size=4, num_kvcache_blocks=12)
    prompts = [[4] * 9, list(range(40, 57)), [8, 9, 10]]
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    tokens = [out["token_ids"] for out in llm.generate(prompts, params, use_tqdm=False)]
    return tokens, llm.scheduler.num_preemptions


def test_triton_backend_survives_preemption(tiny_model_dir):
    """With a cache too small for every request, preempted and recomputed sequences still match the torch backend."""
    triton_tokens, preemptions = generate(tiny_model_dir, "triton")
    assert preemptions > 0, "the cache should be small enough to force a preemption"
    assert triton_tokens == generate(tiny_model_dir, "torch")[0]
