"""Lesson 10: each fused layer's ``weight_loader`` puts a checkpoint projection in its own block of rows."""

import pytest
import torch

from aios.layers.linear import MergedColumnParallelLinear, QKVParallelLinear


def numbered(rows: int, cols: int, start: int) -> torch.Tensor:
    """A [rows, cols] tensor whose entries are start, start + 1, ... (every entry tells where it came from)."""
    return torch.arange(start, start + rows * cols, dtype=torch.float32).view(rows, cols)


@pytest.mark.hint(1)
def test_qkv_loader_places_q_then_k_then_v():
    """QKVParallelLinear.weight_loader: q_proj -> rows [0, q), k_proj -> [q, q+kv), v_proj -> [q+kv, q+2kv)."""
    layer = QKVParallelLinear(hidden_size=6, head_dim=2, total_num_heads=4, total_num_kv_heads=2)
    q, k, v = numbered(8, 6, 0), numbered(4, 6, 1000), numbered(4, 6, 2000)
    for shard_id, tensor in (("v", v), ("q", q), ("k", k)):  # checkpoint order must not matter
        layer.weight.weight_loader(layer.weight, tensor, shard_id)
    assert torch.equal(layer.weight, torch.cat([q, k, v]))


@pytest.mark.hint(1)
def test_qkv_output_is_the_three_projections_side_by_side():
    """After loading, qkv_proj(x) == [x @ q.T | x @ k.T | x @ v.T] (the fused matmul replaces three)."""
    torch.manual_seed(0)
    layer = QKVParallelLinear(hidden_size=8, head_dim=4, total_num_heads=2, total_num_kv_heads=1)
    q, k, v = torch.randn(8, 8), torch.randn(4, 8), torch.randn(4, 8)
    for shard_id, tensor in zip("qkv", (q, k, v)):
        layer.weight.weight_loader(layer.weight, tensor, shard_id)
    x = torch.randn(5, 8)
    expected = torch.cat([x @ q.T, x @ k.T, x @ v.T], dim=-1)
    torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.hint(2)
def test_merged_loader_places_gate_then_up():
    """MergedColumnParallelLinear.weight_loader: shard 0 (gate_proj) fills the first rows, shard 1 (up_proj) the rest."""
    layer = MergedColumnParallelLinear(input_size=3, output_sizes=[5, 5])
    gate, up = numbered(5, 3, 0), numbered(5, 3, 500)
    layer.weight.weight_loader(layer.weight, up, 1)
    layer.weight.weight_loader(layer.weight, gate, 0)
    assert torch.equal(layer.weight, torch.cat([gate, up]))


@pytest.mark.hint(2)
def test_qkv_loader_rejects_a_projection_of_the_wrong_shape():
    """weight_loader raises ValueError (mentioning both shapes) when a projection does not fit its block."""
    layer = QKVParallelLinear(hidden_size=6, head_dim=2, total_num_heads=4, total_num_kv_heads=2)
    with pytest.raises(ValueError, match=r"\(8, 6\)"):
        layer.weight.weight_loader(layer.weight, torch.zeros(8, 6), "k")  # q-sized tensor as k
