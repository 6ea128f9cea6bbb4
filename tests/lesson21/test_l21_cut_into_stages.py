"""Lesson 21: cutting Qwen3 into pipeline stages, in one process (no ranks needed with tensor_parallel_size=1).

A stage's ``Qwen3Stage`` takes the previous stage's (hidden states, residual) and hands its own to the
next; chained by hand, the stages must compute what the whole model computes.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aios.config import Config
from aios.engine.pipeline import (
    RankLayout,
    Stage,
    check_parallel_layout,
    load_stage_model,
    partition_layers,
    split_micro_batches,
    stage_owns_tensor,
)
from aios.utils.loader import load_qwen3

IDS = [4, 8, 15, 16, 23, 42, 108, 7, 300, 2, 99]


@pytest.mark.hint(1)
def test_partition_examples():
    """10 layers on 4 stages -> [(0, 3), (3, 6), (6, 8), (8, 10)]: the remainder goes to the first stages."""
    assert partition_layers(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert partition_layers(4, 2) == [(0, 2), (2, 4)]
    assert partition_layers(7, 1) == [(0, 7)]
    assert partition_layers(3, 3) == [(0, 1), (1, 2), (2, 3)]


@pytest.mark.hint(1)
@settings(max_examples=200, deadline=None)
@given(st.integers(1, 120).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n))))
def test_partition_covers_every_layer_once(case):
    """Any split is contiguous, covers 0..L-1 once, no stage is empty, sizes differ by at most 1, larger ones first."""
    num_layers, pp_size = case
    ranges = partition_layers(num_layers, pp_size)
    assert len(ranges) == pp_size
    assert ranges[0][0] == 0 and ranges[-1][1] == num_layers
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [end - start for start, end in ranges]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)


@pytest.mark.hint(1)
@pytest.mark.parametrize("num_layers, pp_size", [(2, 3), (4, 0), (1, -1)])
def test_impossible_split_is_a_clear_error(num_layers, pp_size):
    """More stages than layers (or fewer than one stage) is a ValueError pointing to the README section;
    one stage per layer is fine."""
    with pytest.raises(ValueError, match="lesson21/README.md, 'Cutting the model into stages'"):
        partition_layers(num_layers, pp_size)
    assert partition_layers(num_layers + 2, num_layers + 2) == [(i, i + 1) for i in range(num_layers + 2)]


def test_world_size_must_equal_tp_times_pp():
    """tp x pp different from the number of launched ranks is a ValueError naming both and the README section."""
    with pytest.raises(ValueError, match=r"2\) x pipeline_parallel_size \(2\) = 4 ranks, but the launcher started 3"):
        check_parallel_layout(4, 2, 2, world_size=3)
    check_parallel_layout(4, 2, 2, world_size=4)


@pytest.mark.hint(2)
def test_rank_layout_of_tp2_pp2():
    """World rank = pp_rank * tp + tp_rank; activations go to the same TP rank of the next stage."""
    layouts = [RankLayout(rank, tp_size=2, pp_size=2, num_layers=4) for rank in range(4)]
    assert [(lay.pp_rank, lay.tp_rank) for lay in layouts] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [lay.next_rank for lay in layouts] == [2, 3, None, None]
    assert [lay.prev_rank for lay in layouts] == [None, None, 0, 1]
    assert layouts[3].stage == Stage(1, 2, 2, 4)
    assert layouts[0].sampler_rank == 2


@pytest.mark.hint(2)
def test_rank_layout_of_three_stages():
    """Three stages of one rank each: 0 -> 1 -> 2, rank 2 samples."""
    layouts = [RankLayout(rank, tp_size=1, pp_size=3, num_layers=5) for rank in range(3)]
    assert [lay.next_rank for lay in layouts] == [1, 2, None]
    assert [lay.prev_rank for lay in layouts] == [None, 0, 1]
    assert [(lay.stage.start, lay.stage.end) for lay in layouts] == [(0, 2), (2, 4), (4, 5)]


@pytest.mark.hint(5)
@settings(max_examples=100, deadline=None)
@given(st.integers(1, 40), st.integers(1, 6))
def test_micro_batches_keep_order_and_balance(num_seqs, parts):
    """split_micro_batches: at most n non-empty contiguous parts whose sizes differ by at most 1, order kept."""
    seqs = list(range(num_seqs))
    micro = split_micro_batches(seqs, parts)
    assert [s for part in micro for s in part] == seqs
    assert 1 <= len(micro) <= parts and all(micro)
    sizes = [len(part) for part in micro]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.hint(4)
def test_stage_owns_its_tensors():
    """A stage loads its own layers' tensors, the embedding on the first stage, norm and LM head on the last."""
    first, last = Stage(0, 2, 0, 3), Stage(1, 2, 3, 5)
    assert stage_owns_tensor("model.layers.2.mlp.down_proj.weight", first, False)
    assert not stage_owns_tensor("model.layers.3.mlp.down_proj.weight", first, False)
    assert stage_owns_tensor("model.layers.3.self_attn.q_proj.weight", last, False)
    assert stage_owns_tensor("model.layers.12.input_layernorm.weight", Stage(2, 3, 10, 13), False)
    assert not stage_owns_tensor("model.layers.1.input_layernorm.weight", Stage(2, 3, 10, 13), False)
    assert stage_owns_tensor("model.embed_tokens.weight", first, False)
    assert not stage_owns_tensor("model.embed_tokens.weight", last, False)
    assert stage_owns_tensor("model.embed_tokens.weight", last, True)  # tied: the last stage's LM head
    assert stage_owns_tensor("model.norm.weight", last, False) and stage_owns_tensor("lm_head.weight", last, False)
    assert not stage_owns_tensor("model.norm.weight", first, False)


def full_logits(model_dir) -> torch.Tensor:
    model = load_qwen3(model_dir, dtype=torch.float32, fused_layers=True, fuse_residual_norm=True)
    with torch.inference_mode():
        return model.compute_logits(model(torch.tensor(IDS), torch.arange(len(IDS))))


def chained_logits(model_dir, pp_size: int) -> tuple[torch.Tensor, list]:
    """Every stage of a pp_size split, built in this process and chained by hand (no KV cache)."""
    config = Config(str(model_dir), dtype="float32", device="cpu")
    ranges = partition_layers(config.hf_config.num_hidden_layers, pp_size)
    stages = [load_stage_model(config, Stage(i, pp_size, *r)) for i, r in enumerate(ranges)]
    positions, hidden, residual = torch.arange(len(IDS)), None, None
    with torch.inference_mode():
        for stage in stages:
            hidden, residual = stage(positions, torch.tensor(IDS) if hidden is None else None, hidden, residual)
        return stages[-1].compute_logits(hidden), stages


@pytest.mark.hint(3)
def test_two_stages_chained_give_the_full_model_logits(tiny_model_dir):
    """Tiny (tied embeddings): stage 0 then stage 1 give the whole model's logits (fp32, atol 1e-5)."""
    logits, stages = chained_logits(tiny_model_dir, 2)
    torch.testing.assert_close(logits, full_logits(tiny_model_dir), rtol=1e-5, atol=1e-5)
    assert not hasattr(stages[0], "lm_head") and not hasattr(stages[1].model, "embed_tokens")


@pytest.mark.hint(3)
@pytest.mark.parametrize("pp_size", [3, 4])
def test_uneven_stages_chained_give_the_full_model_logits(small_model_dir, pp_size):
    """Small (4 layers, untied): 3 uneven stages or 4 one-layer stages give the whole model's logits."""
    logits, stages = chained_logits(small_model_dir, pp_size)
    torch.testing.assert_close(logits, full_logits(small_model_dir), rtol=1e-5, atol=1e-5)


@pytest.mark.hint(4)
def test_a_stage_holds_only_its_layers_weights(small_model_dir):
    """Stage 1 of 2 (layers 2, 3) has parameters for those layers only, the norm and the LM head."""
    config = Config(str(small_model_dir), dtype="float32", device="cpu")
    stage = load_stage_model(config, Stage(1, 2, 2, 4))
    layers = {int(name.split(".")[2]) for name, _ in stage.named_parameters() if name.startswith("model.layers.")}
    assert layers == {2, 3}
    names = {name for name, _ in stage.named_parameters()}
    assert "lm_head.weight" in names and "model.norm.weight" in names and "model.embed_tokens.weight" not in names


def test_config_refuses_zero_stages(tiny_model_dir):
    """pipeline_parallel_size=0 is refused by the Config, pointing to the README; 2 stages of the tiny model are (0, 1), (1, 2)."""
    with pytest.raises(ValueError, match="pipeline_parallel_size must be >= 1 .*lesson21/README.md"):
        Config(str(tiny_model_dir), pipeline_parallel_size=0)
    config = Config(str(tiny_model_dir), pipeline_parallel_size=2)
    assert partition_layers(config.hf_config.num_hidden_layers, config.pipeline_parallel_size) == [(0, 1), (1, 2)]
