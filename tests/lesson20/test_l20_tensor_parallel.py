"""Lesson 20: the MoE layer split over two gloo ranks (experts sharded by intermediate size) equals one process.

The rank processes run learner code, so the rank tasks come from ``learner_helper`` (lesson 14's pattern).
"""

from pathlib import Path

import pytest
import torch

from aios.engine.distributed import launch_ranks
from aios.utils.loader import load_qwen3

IDS = [4, 8, 15, 16, 23, 42, 108, 7, 300, 2, 99]
pytestmark = pytest.mark.timeout(180, method="thread")


@pytest.mark.hint(7)
def test_two_ranks_give_the_moe_logits_of_one(tiny_moe_dir, learner_helper):
    """tiny-moe over 2 ranks: rank 0's logits == 1 process's (fp32, atol 1e-4); each rank holds half of every expert."""
    model = load_qwen3(tiny_moe_dir, dtype=torch.float32, fused_layers=True, fuse_residual_norm=True)
    with torch.inference_mode():
        expected = model.compute_logits(model(torch.tensor(IDS), torch.arange(len(IDS))))
    tasks = learner_helper(Path(__file__).with_name("l20_rank_tasks.py"))
    rank0, rank1 = launch_ranks(tasks.tp_moe_logits, 2, args=(str(tiny_moe_dir), IDS), timeout=150)
    assert rank1["logits"] is None
    torch.testing.assert_close(rank0["logits"], expected, rtol=1e-5, atol=1e-4)
    assert rank0["gate_up_shape"] == rank1["gate_up_shape"] == (8, 32, 64)  # [E, 2 * 32 / 2, H]
    assert rank0["down_shape"] == (8, 64, 16) and rank0["router_shape"] == (8, 64)  # the router is replicated


@pytest.mark.hint(7)
def test_sharded_moe_layer_sums_to_the_full_layer(learner_helper):
    """FusedMoE with tp=2 loaded from stacked weights: the all-reduced output == moe_loop on the full weights."""
    from aios.layers.fused_moe import moe_loop

    tasks = learner_helper(Path(__file__).with_name("l20_rank_tasks.py"))
    rank0, rank1 = launch_ranks(tasks.tp_moe_block, 2, args=(24, 20, 6, 3, "torch"), timeout=150)
    expected = moe_loop(rank0["x"], rank0["gate_up"], rank0["down"], rank0["weights"], rank0["ids"])
    torch.testing.assert_close(rank0["out"], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rank1["out"], expected, rtol=1e-5, atol=1e-5)
