"""Lesson 20: the Qwen3-MoE model against transformers' Qwen3MoeForCausalLM (fp32, CPU), loading and generation."""

import pytest
import torch

from aios.utils.loader import load_qwen3

IDS = [4, 8, 15, 16, 23, 42, 108, 7, 300, 2, 99, 57]
PROMPTS = [[5, 6, 7, 8, 9], list(range(20, 50)), [11] * 13]


def our_logits(model_dir, **options):
    model = load_qwen3(model_dir, dtype=torch.float32, **options)
    with torch.inference_mode():
        return model.compute_logits(model(torch.tensor(IDS), torch.arange(len(IDS))))


@pytest.mark.hint(7)
@pytest.mark.parametrize("options", [{}, {"fused_layers": True, "fuse_residual_norm": True}])
def test_logits_equal_transformers_qwen3_moe(tiny_moe_dir, hf_logits, options):
    """load_qwen3 on a qwen3_moe checkpoint builds the MoE model; logits == transformers' (fp32, atol 1e-4)."""
    model = load_qwen3(tiny_moe_dir, dtype=torch.float32, **options)
    assert all(hasattr(layer.mlp, "experts") for layer in model.model.layers), "every layer of tiny-moe is sparse"
    torch.testing.assert_close(our_logits(tiny_moe_dir, **options), hf_logits(tiny_moe_dir, IDS), rtol=1e-4, atol=1e-4)


@pytest.mark.hint(1)
@pytest.mark.hint(2)
@pytest.mark.parametrize("overrides", [{"norm_topk_prob": False}, {"mlp_only_layers": [0, 2]},
                                       {"decoder_sparse_step": 2}, {"num_experts_per_tok": 1}])
def test_config_options_match_transformers(moe_variant, hf_logits, overrides):
    """norm_topk_prob off, mlp_only_layers, decoder_sparse_step, k = 1: still transformers' logits."""
    model_dir = moe_variant(**overrides)
    torch.testing.assert_close(our_logits(model_dir, fused_layers=True), hf_logits(model_dir, IDS),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.hint(7)
def test_stacked_expert_checkpoint_loads_like_the_per_expert_one(tiny_moe_dir, tmp_path):
    """A checkpoint with transformers 5's stacked experts.gate_up_proj [E, 2I, H] / down_proj [E, H, I] loads too."""
    import shutil

    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tiny_moe_dir / "model.safetensors"))
    stacked = {}
    for layer in range(3):
        prefix = f"model.layers.{layer}.mlp.experts."
        gate = torch.stack([tensors.pop(f"{prefix}{e}.gate_proj.weight") for e in range(8)])
        up = torch.stack([tensors.pop(f"{prefix}{e}.up_proj.weight") for e in range(8)])
        stacked[prefix + "gate_up_proj"] = torch.cat([gate, up], dim=1).contiguous()
        stacked[prefix + "down_proj"] = torch.stack([tensors.pop(f"{prefix}{e}.down_proj.weight") for e in range(8)])
    shutil.copytree(tiny_moe_dir, tmp_path / "stacked")
    save_file({**tensors, **stacked}, str(tmp_path / "stacked" / "model.safetensors"))
    for options in ({}, {"fused_layers": True}):
        torch.testing.assert_close(our_logits(tmp_path / "stacked", **options), our_logits(tiny_moe_dir, **options),
                                   rtol=0, atol=0)


@pytest.mark.hint(7)
def test_a_missing_expert_tensor_is_named(tiny_moe_dir, tmp_path):
    """A checkpoint without one expert's up_proj fails to load with an error that names the tensor."""
    import shutil

    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tiny_moe_dir / "model.safetensors"))
    del tensors["model.layers.1.mlp.experts.5.up_proj.weight"]
    shutil.copytree(tiny_moe_dir, tmp_path / "broken")
    save_file(tensors, str(tmp_path / "broken" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.experts\.5\.up_proj\.weight"):
        load_qwen3(tmp_path / "broken", dtype=torch.float32, fused_layers=True)


@pytest.mark.hint(7)
def test_llm_generates_the_greedy_tokens_of_transformers(tiny_moe_dir):
    """LLM(dir) on the MoE checkpoint: greedy tokens == transformers' generate (batch of 3, prefix caching on)."""
    from transformers import AutoModelForCausalLM

    from aios import LLM
    from aios.config import features_up_to
    from aios.sampling_params import SamplingParams
    from l20_helpers import ENGINE

    hf = AutoModelForCausalLM.from_pretrained(tiny_moe_dir, dtype=torch.float32)
    expected = []
    for prompt in PROMPTS:
        with torch.no_grad():
            out = hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=None)
        expected.append(out[0, len(prompt):].tolist())
    llm = LLM(str(tiny_moe_dir), **{**features_up_to(16), **ENGINE})
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    got = [out["token_ids"] for out in llm.generate(PROMPTS, params, use_tqdm=False)]
    assert got == expected


@pytest.mark.hint(7)
def test_checkpoint_saved_by_transformers_loads(tiny_moe_dir, tmp_path):
    """transformers 5's save_pretrained (per-expert tensors, num_local_experts in config.json) loads; same logits."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_moe_dir, dtype=torch.float32)
    hf.save_pretrained(tmp_path / "saved")
    with torch.no_grad():
        expected = hf(torch.tensor([IDS])).logits[0]
    torch.testing.assert_close(our_logits(tmp_path / "saved", fused_layers=True), expected, rtol=1e-4, atol=1e-4)
