"""Tensor parallelism refuses a Qwen3-MoE config whose experts cannot be sliced evenly, before any rank starts."""

from types import SimpleNamespace

import pytest


def moe_config(moe_intermediate_size: int, tp: int) -> SimpleNamespace:
    hf = SimpleNamespace(num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, vocab_size=256,
                         moe_intermediate_size=moe_intermediate_size, architectures=["Qwen3MoeForCausalLM"],
                         model_type="qwen3_moe")
    return SimpleNamespace(tensor_parallel_size=tp, hf_config=hf, fused_layers=True, device="cpu")


def test_uneven_expert_width_is_refused(learner_import):
    tp_runner = learner_import("aios.engine.tp_runner")
    with pytest.raises(ValueError, match=r"moe_intermediate_size \(33\) is not divisible by tensor_parallel_size \(2\)"):
        tp_runner.check_tensor_parallel_config(moe_config(33, 2))


def test_even_expert_width_passes(learner_import):
    tp_runner = learner_import("aios.engine.tp_runner")
    tp_runner.check_tensor_parallel_config(moe_config(32, 2))
