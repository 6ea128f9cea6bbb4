"""Lesson 20: MoE configs no forward pass could run are refused clearly, pointing to the README."""

import re

import pytest
import torch

README = r"exercises/lesson20/README\.md, 'The config fields'"


@pytest.mark.hint(2)
@pytest.mark.parametrize("fields,name", [
    ({"num_experts_per_tok": 9}, "num_experts_per_tok"),
    ({"num_experts_per_tok": 0}, "num_experts_per_tok"),
    ({"num_experts": 0}, "num_experts"),
    ({"mlp_only_layers": [3]}, "mlp_only_layers"),
    ({"decoder_sparse_step": 0}, "decoder_sparse_step"),
])
def test_impossible_moe_config_is_refused(tiny_moe_dir, edited_config, fields, name):
    """load_qwen3 refuses k > E, k < 1, no experts, a layer index past the end, a step of 0 (README named);
    the valid checkpoint then runs."""
    from aios.utils.loader import load_qwen3

    broken = edited_config(tiny_moe_dir, **fields)
    with pytest.raises(ValueError, match=name) as error:
        load_qwen3(broken, dtype=torch.float32)
    assert re.search(README, str(error.value)), "the error should point to the README section"
    runs_a_forward(tiny_moe_dir)


def runs_a_forward(model_dir):
    """The unedited checkpoint still loads and routes tokens through its experts (finite logits)."""
    from aios.utils.loader import load_qwen3

    model = load_qwen3(model_dir, dtype=torch.float32, fused_layers=True)
    with torch.inference_mode():
        logits = model.compute_logits(model(torch.tensor([3, 1, 4, 1, 5]), torch.arange(5)))
    assert tuple(logits.shape) == (5, 512) and bool(torch.isfinite(logits).all())


@pytest.mark.hint(7)
def test_dense_checkpoint_still_builds_qwen3(tiny_model_dir, tiny_moe_dir):
    """config.json picks the model: a qwen3 checkpoint gets dense MLPs, a qwen3_moe one a router and experts."""
    from aios.utils.loader import load_qwen3

    dense = load_qwen3(tiny_model_dir, dtype=torch.float32)
    moe = load_qwen3(tiny_moe_dir, dtype=torch.float32)
    assert not hasattr(dense.model.layers[0].mlp, "experts") and hasattr(dense.model.layers[0].mlp, "gate_proj")
    assert hasattr(moe.model.layers[0].mlp, "experts") and hasattr(moe.model.layers[0].mlp, "gate")
