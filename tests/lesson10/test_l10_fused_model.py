"""Lesson 10: the fused model computes exactly what the unfused lesson-3 model computes.

Fusion changes how the work is grouped (one matmul instead of three, one instead of
two), not what is computed: in float32 the logits agree to rounding.
"""

import pytest
import torch

from aios.config import features_up_to
from aios.llm import LLM
from aios.sampling_params import SamplingParams
from aios.utils.loader import load_qwen3

PROMPT = [3, 17, 42, 99, 5, 250, 7, 8, 300, 12, 64, 1]


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():  # not inference_mode: its tensors cannot be shared with the learner worker
        hidden = model(torch.tensor(ids), torch.arange(len(ids)))
        return model.compute_logits(hidden)


@pytest.mark.hint(5)
def test_fused_logits_equal_unfused_logits(tiny_model_dir):
    """load_qwen3(fused_layers=True) gives the unfused model's logits (fp32, atol 1e-5) at every position."""
    unfused = load_qwen3(tiny_model_dir, dtype=torch.float32)
    fused = load_qwen3(tiny_model_dir, dtype=torch.float32, fused_layers=True)
    torch.testing.assert_close(logits(fused, PROMPT), logits(unfused, PROMPT), rtol=0, atol=1e-5)


def test_fused_model_holds_qkv_and_gate_up_matrices(tiny_model_dir):
    """A fused layer's qkv_proj weight is [q_proj; k_proj; v_proj] and gate_up_proj is [gate_proj; up_proj]."""
    unfused = load_qwen3(tiny_model_dir, dtype=torch.float32)
    fused = load_qwen3(tiny_model_dir, dtype=torch.float32, fused_layers=True)
    for plain, merged in zip(unfused.model.layers, fused.model.layers):
        attn = plain.self_attn
        expected_qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        assert torch.equal(merged.self_attn.qkv_proj.weight, expected_qkv)
        assert torch.equal(merged.mlp.gate_up_proj.weight, torch.cat([plain.mlp.gate_proj.weight, plain.mlp.up_proj.weight]))


@pytest.mark.hint(5)
def test_engine_with_fused_layers_generates_the_same_tokens(tiny_model_dir):
    """LLM(fused_layers=True) and LLM(fused_layers=False) produce the same greedy completions."""
    prompts = [PROMPT, [9, 8, 7], list(range(40, 75))]
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    results = {}
    for fused in (True, False):
        options = {**features_up_to(10), "attention_backend": "torch", "fused_layers": fused}
        llm = LLM(tiny_model_dir, **options, max_num_seqs=4, max_model_len=128, num_kvcache_blocks=32)
        assert llm.model_runner.model.fused_layers is fused
        results[fused] = [out["token_ids"] for out in llm.generate(prompts, params, use_tqdm=False)]
    assert results[True] == results[False]
