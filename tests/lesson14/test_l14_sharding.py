"""Lesson 14: every rank's slice of every weight, checked in one process by building each rank's layer.

The layers take ``tp_rank``/``tp_size`` explicitly, so rank 0's and rank 1's copies can sit
side by side: their slices must put the whole weight back together.
"""

import pytest
import torch
import torch.nn.functional as F

from aios.layers.embed_head import embed_vocab_shard
from aios.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
    shard_for_rank,
)

TP = 2


class RecordingSlice:
    """Stands in for a safetensors slice: remembers every index it is read with."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor
        self.reads = []

    def get_shape(self):
        return list(self.tensor.shape)

    def __getitem__(self, index):
        self.reads.append(index)
        return self.tensor[index].clone()


@pytest.mark.hint(2)
def test_shard_for_rank_splits_rows_and_columns():
    """shard_for_rank gives rank r the r-th equal block along dim 0 or dim 1; the blocks rebuild the tensor."""
    full = torch.arange(24.0).view(6, 4)
    rows = [shard_for_rank(full, 0, rank, TP) for rank in range(TP)]
    columns = [shard_for_rank(full, 1, rank, TP) for rank in range(TP)]
    assert torch.equal(rows[1], full[3:])
    assert torch.equal(columns[0], full[:, :2])
    assert torch.equal(torch.cat(rows, 0), full) and torch.equal(torch.cat(columns, 1), full)


@pytest.mark.hint(2)
def test_shard_for_rank_reads_only_its_part_of_a_slice():
    """From a safetensors-like slice, shard_for_rank reads just the rank's block (never the whole tensor)."""
    full = torch.arange(32.0).view(8, 4)
    lazy = RecordingSlice(full)
    got = shard_for_rank(lazy, 0, 1, TP)
    assert torch.equal(got, full[4:])
    assert len(lazy.reads) == 1
    assert lazy.tensor[lazy.reads[0]].shape == (4, 4)


@pytest.mark.hint(2)
def test_shard_for_rank_refuses_an_uneven_split():
    """A dimension that does not divide by tp_size is a ValueError, not a silently short slice."""
    with pytest.raises(ValueError):
        shard_for_rank(torch.zeros(5, 4), 0, 0, TP)


@pytest.mark.hint(1)
def test_column_parallel_outputs_concatenate_to_the_full_output():
    """ColumnParallelLinear ranks each load their rows; their outputs side by side equal the full layer's."""
    torch.manual_seed(0)
    weight, x = torch.randn(6, 5), torch.randn(3, 5)
    outputs = []
    for rank in range(TP):
        layer = ColumnParallelLinear(5, 6, tp_rank=rank, tp_size=TP)
        layer.weight.weight_loader(layer.weight, weight)
        outputs.append(layer(x))
    torch.testing.assert_close(torch.cat(outputs, dim=-1), x @ weight.T)


@pytest.mark.hint(1)
def test_row_parallel_partial_sums_add_up_to_the_full_output():
    """RowParallelLinear ranks load their columns; the sum of x_r @ W_r.T over ranks is x @ W.T."""
    torch.manual_seed(1)
    weight, x = torch.randn(3, 8), torch.randn(2, 8)
    total = 0
    for rank in range(TP):
        layer = RowParallelLinear(8, 3, tp_rank=rank, tp_size=TP)
        layer.weight.weight_loader(layer.weight, weight)
        total = total + x[:, rank * 4 : (rank + 1) * 4] @ layer.weight.T
    torch.testing.assert_close(total, x @ weight.T)


@pytest.mark.hint(1)
def test_qkv_ranks_hold_whole_heads():
    """With 4 query heads and 2 KV heads on 2 ranks, rank r holds [q heads 2r, 2r+1; k head r; v head r]."""
    head_dim, hidden = 2, 3
    q, k, v = torch.randn(8, hidden), torch.randn(4, hidden), torch.randn(4, hidden)
    for rank in range(TP):
        layer = QKVParallelLinear(hidden, head_dim, 4, 2, tp_rank=rank, tp_size=TP)
        for shard_id, tensor in zip("qkv", (q, k, v)):
            layer.weight.weight_loader(layer.weight, tensor, shard_id)
        expected = torch.cat([q[4 * rank : 4 * rank + 4], k[2 * rank : 2 * rank + 2], v[2 * rank : 2 * rank + 2]])
        assert torch.equal(layer.weight, expected)


@pytest.mark.hint(1)
def test_gate_up_ranks_hold_their_rows_of_both():
    """MergedColumnParallelLinear rank r holds [gate rows of r; up rows of r], so SiluAndMul still pairs them."""
    gate, up = torch.randn(6, 2), torch.randn(6, 2)
    for rank in range(TP):
        layer = MergedColumnParallelLinear(2, [6, 6], tp_rank=rank, tp_size=TP)
        layer.weight.weight_loader(layer.weight, gate, 0)
        layer.weight.weight_loader(layer.weight, up, 1)
        assert torch.equal(layer.weight, torch.cat([gate[3 * rank : 3 * rank + 3], up[3 * rank : 3 * rank + 3]]))


@pytest.mark.hint(3)
def test_vocab_shards_of_the_embedding_sum_to_the_full_lookup():
    """embed_vocab_shard gives each id's row on the rank that owns it and zeros elsewhere; the ranks sum to F.embedding."""
    torch.manual_seed(2)
    table = torch.randn(10, 4)
    ids = torch.tensor([0, 4, 5, 9, 5, 3])
    parts = [embed_vocab_shard(ids, table[5 * rank : 5 * rank + 5], 5 * rank) for rank in range(TP)]
    assert torch.equal(parts[0][2], torch.zeros(4))  # id 5 lives on rank 1
    torch.testing.assert_close(parts[0] + parts[1], F.embedding(ids, table))
