"""Lesson 20 hidden tests: the expert weight loader (layouts, tensor-parallel shards) and the MoE engine."""

import shutil

import pytest
import torch

from aios.utils.loader import load_qwen3

IDS = [9, 3, 77, 120, 5, 5, 5, 44, 310, 18]


def logits_of(model_dir, **options):
    model = load_qwen3(model_dir, dtype=torch.float32, **options)
    with torch.inference_mode():
        return model.compute_logits(model(torch.tensor(IDS), torch.arange(len(IDS))))


@pytest.mark.hint(7)
def test_expert_shards_of_two_ranks_rebuild_every_expert():
    """FusedMoE(tp_size=2): per-expert and stacked loading give each rank rows [gate_r; up_r] and columns down_r."""
    from aios.layers.fused_moe import FusedMoE

    gen = torch.Generator().manual_seed(5)
    gate, up = torch.randn(3, 8, 6, generator=gen), torch.randn(3, 8, 6, generator=gen)
    down = torch.randn(3, 6, 8, generator=gen)
    for rank in range(2):
        per_expert = FusedMoE(3, 6, 8, tp_rank=rank, tp_size=2)
        stacked = FusedMoE(3, 6, 8, tp_rank=rank, tp_size=2)
        for e in range(3):
            per_expert.gate_up_proj.weight_loader(per_expert.gate_up_proj, gate[e], (e, "gate"))
            per_expert.gate_up_proj.weight_loader(per_expert.gate_up_proj, up[e], (e, "up"))
            per_expert.down_proj.weight_loader(per_expert.down_proj, down[e], (e, "down"))
        stacked.gate_up_proj.weight_loader(stacked.gate_up_proj, torch.cat([gate, up], dim=1), None)
        stacked.down_proj.weight_loader(stacked.down_proj, down, None)
        rows = slice(4 * rank, 4 * rank + 4)
        expected_gate_up = torch.cat([gate[:, rows], up[:, rows]], dim=1)
        for layer in (per_expert, stacked):
            assert layer.gate_up_proj.shape == (3, 8, 6) and layer.down_proj.shape == (3, 6, 4)
            torch.testing.assert_close(layer.gate_up_proj.data, expected_gate_up, rtol=0, atol=0)
            torch.testing.assert_close(layer.down_proj.data, down[:, :, rows], rtol=0, atol=0)


@pytest.mark.hint(7)
def test_checkpoint_with_both_expert_layouts_for_one_layer_is_refused(tiny_moe_dir, tmp_path):
    """A checkpoint holding one layer's experts both per expert and stacked is an error naming the tensor."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tiny_moe_dir / "model.safetensors"))
    prefix = "model.layers.0.mlp.experts."
    tensors[prefix + "down_proj"] = torch.stack([tensors[f"{prefix}{e}.down_proj.weight"] for e in range(8)])
    shutil.copytree(tiny_moe_dir, tmp_path / "both")
    save_file(tensors, str(tmp_path / "both" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.experts"):
        load_qwen3(tmp_path / "both", dtype=torch.float32, fused_layers=True)


@pytest.mark.hint(7)
def test_other_seed_and_sparse_step_match_transformers(moe_variant, hf_logits):
    """Seed 3, decoder_sparse_step 2, mlp_only_layers [2], no renormalisation: transformers' logits (fp32)."""
    model_dir = moe_variant(seed=3, decoder_sparse_step=2, mlp_only_layers=[2], norm_topk_prob=False,
                            num_hidden_layers=4)
    expected = hf_logits(model_dir, IDS)
    for options in ({}, {"fused_layers": True, "fuse_residual_norm": True}):
        torch.testing.assert_close(logits_of(model_dir, **options), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.hint(7)
def test_engine_with_chunks_and_prefix_cache_generates_transformers_tokens(tiny_moe_dir):
    """LLM on tiny-moe (chunked prefill, prefix caching, shared prefixes, budget 16): transformers' greedy tokens."""
    from l20_helpers import ENGINE
    from transformers import AutoModelForCausalLM

    from aios import LLM
    from aios.config import features_up_to
    from aios.sampling_params import SamplingParams

    base = list(range(30, 54))
    prompts = [base + [7, 8], base + [9], [3] * 5, list(range(100, 141))]
    hf = AutoModelForCausalLM.from_pretrained(tiny_moe_dir, dtype=torch.float32)
    expected = []
    for prompt in prompts:
        with torch.no_grad():
            out = hf.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, eos_token_id=None)
        expected.append(out[0, len(prompt):].tolist())
    options = {**features_up_to(16), **ENGINE, "enable_chunked_prefill": True, "max_num_batched_tokens": 16}
    llm = LLM(str(tiny_moe_dir), **options)
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    assert [out["token_ids"] for out in llm.generate(prompts, params, use_tqdm=False)] == expected


@pytest.mark.hint(2)
def test_llm_refuses_more_active_experts_than_experts(tiny_moe_dir, edited_config):
    """LLM(dir) with num_experts_per_tok > num_experts fails with a ValueError naming the field and the README;
    the valid checkpoint then generates."""
    from aios import LLM

    from aios.sampling_params import SamplingParams

    broken = edited_config(tiny_moe_dir, num_experts_per_tok=12)
    options = {"device": "cpu", "attention_backend": "torch", "max_model_len": 64, "max_num_seqs": 2}
    with pytest.raises(ValueError, match=r"num_experts_per_tok.*exercises/lesson20/README\.md"):
        LLM(str(broken), **options)
    llm = LLM(str(tiny_moe_dir), **options)
    params = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)
    assert len(llm.generate([[5, 6, 7]], params, use_tqdm=False)[0]["token_ids"]) == 2
