"""Lesson 14 on two GPUs: NCCL ranks with Triton attention and CUDA graphs compute what one GPU computes.

Skipped without CUDA (marker ``gpu``) or with fewer than two GPUs. Run by scripts/gpu/tp.sh.
"""

import pytest
import torch

from aios.config import features_up_to
from aios.engine.tp_runner import step_logits
from aios.llm import LLM
from aios.sampling_params import SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs"),
    pytest.mark.timeout(600, method="thread"),
]

OPTIONS = {**features_up_to(14), "dtype": "float32", "max_num_seqs": 8, "max_model_len": 512,
           "num_kvcache_blocks": 256}
PROMPTS = [list(range(3, 3 + n)) for n in (7, 64, 129, 300)]


def greedy(llm) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    return [out["token_ids"] for out in llm.generate(PROMPTS, params, use_tqdm=False)]


def prefill_logits(llm, logits_of) -> torch.Tensor:
    for prompt in PROMPTS:
        llm.add_request(prompt, SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True))
    seqs, is_prefill = llm.scheduler.schedule()
    assert is_prefill and len(seqs) == len(PROMPTS)
    logits = logits_of(seqs, is_prefill).cpu()
    llm.scheduler.postprocess(seqs, logits.argmax(-1).tolist())
    return logits


def test_nccl_two_gpus_match_one_gpu(small_model_dir, learner_import):
    """On 2 GPUs (NCCL, Triton attention, CUDA-graph decode) the small model's fp32 logits and greedy tokens equal 1 GPU's."""
    one = LLM(small_model_dir, **OPTIONS)
    expected_logits = prefill_logits(one, lambda seqs, p: step_logits(one.model_runner, seqs, p))
    expected_tokens = greedy(one)
    del one
    learner_import("torch").cuda.empty_cache()  # where the engine's memory was
    two = LLM(small_model_dir, tensor_parallel_size=2, **OPTIONS)
    try:
        assert two.config.enforce_eager is False  # decode replays CUDA graphs holding the all-reduces
        torch.testing.assert_close(prefill_logits(two, two.model_runner.step_logits), expected_logits,
                                   rtol=1e-4, atol=1e-3)
        assert greedy(two) == expected_tokens
    finally:
        two.shutdown()
