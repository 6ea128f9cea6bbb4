"""Lesson 9: the engine gives the same greedy tokens with the Triton kernels as with the PyTorch path."""

from aios.config import features_up_to
from aios.llm import LLM
from aios.sampling_params import SamplingParams

PROMPTS = [[5, 6, 7, 8, 9], list(range(20, 58)), [11] * 13]


def greedy_tokens(model_dir, backend: str, max_tokens: int = 6) -> list[list[int]]:
    options = {**features_up_to(9), "attention_backend": backend}
    llm = LLM(model_dir, **options, max_num_seqs=4, max_model_len=128, kvcache_block_size=4,
              num_kvcache_blocks=128)
    assert llm.model_runner.kv_cache.backend == backend
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    return [out["token_ids"] for out in llm.generate(PROMPTS, params, use_tqdm=False)]


def test_engine_triton_backend_matches_torch_backend(tiny_model_dir):
    """LLM(attention_backend="triton") generates the same greedy tokens as attention_backend="torch" on tiny."""
    triton_tokens = greedy_tokens(tiny_model_dir, "triton")
    assert triton_tokens == greedy_tokens(tiny_model_dir, "torch")
