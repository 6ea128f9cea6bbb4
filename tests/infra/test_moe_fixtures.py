"""The Qwen3-MoE presets of ``make-model`` (lesson 20): published shapes, and checkpoints transformers loads."""

import pytest
import torch

from aios import fixtures
from aios.fixtures import PRESETS, make_model
from aios.fixtures.weights import tensor_specs

MOE_PRESETS = [name for name, shape in PRESETS.items() if shape.get("model_type") == "qwen3_moe"]


def test_30b_a3b_preset_is_the_published_shape():
    """30b-a3b carries Qwen3-30B-A3B's config: 48 layers, 128 experts, 8 active, hidden 2048, experts 768 wide."""
    config = fixtures.build_config("30b-a3b")
    assert config["architectures"] == ["Qwen3MoeForCausalLM"] and config["model_type"] == "qwen3_moe"
    assert (config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]) == (48, 2048, 6144)
    assert (config["num_experts"], config["num_experts_per_tok"], config["moe_intermediate_size"]) == (128, 8, 768)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (32, 4, 128)
    assert config["norm_topk_prob"] is True and config["decoder_sparse_step"] == 1 and config["mlp_only_layers"] == []
    params = sum(torch.Size(spec.shape).numel() for spec in tensor_specs(config))
    assert 30.0e9 < params < 31.0e9  # "30B": about 61 GB in bfloat16


@pytest.mark.parametrize("overrides", [{}, {"mlp_only_layers": [1]}, {"decoder_sparse_step": 2}])
def test_moe_checkpoint_loads_in_transformers_without_missing_keys(tmp_path, overrides):
    """tiny-moe writes per-expert tensors (the published layout) that Qwen3MoeForCausalLM loads completely."""
    from transformers import AutoModelForCausalLM

    folder = make_model("tiny-moe", tmp_path, **overrides)
    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert type(model).__name__ == "Qwen3MoeForCausalLM"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_moe_preset_refuses_more_active_experts_than_experts(tmp_path):
    """num_experts_per_tok > num_experts is refused when the checkpoint is made, naming the README."""
    with pytest.raises(ValueError, match="num_experts_per_tok.*lesson20"):
        make_model("tiny-moe", tmp_path, num_experts_per_tok=9)
