"""Lesson 10 (hidden): the packed-module loader on sharded, tied, duplicated and mis-shaped checkpoints,
and the weight loaders on biases and other head layouts."""

import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from aios.layers.linear import MergedColumnParallelLinear, QKVParallelLinear
from aios.utils.loader import CheckpointMismatchError, checkpoint_plan, load_qwen3


def read_checkpoint(model_dir) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            tensors.update({name: f.get_tensor(name) for name in f.keys()})
    return tensors


def write_checkpoint(source_dir, target_dir, *files: dict[str, torch.Tensor]):
    target_dir.mkdir()
    for path in source_dir.iterdir():
        if path.suffix != ".safetensors":
            shutil.copy(path, target_dir / path.name)
    for i, tensors in enumerate(files):
        save_file(tensors, str(target_dir / f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"))
    return target_dir


def state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.hint(4)
def test_sharded_checkpoint_loads_like_a_single_file(tiny_model_dir, tmp_path):
    """A checkpoint split over three files fills every fused parameter exactly as the one-file checkpoint does."""
    tensors = read_checkpoint(tiny_model_dir)
    names = sorted(tensors)
    files = [{n: tensors[n] for n in names[i::3]} for i in range(3)]
    sharded = write_checkpoint(tiny_model_dir, tmp_path / "sharded", *files)
    expected = state(load_qwen3(tiny_model_dir, fused_layers=True))
    got = state(load_qwen3(sharded, fused_layers=True))
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[name], expected[name]) for name in expected)


@pytest.mark.hint(4)
def test_tensor_present_twice_is_an_error(tiny_model_dir, tmp_path):
    """A tensor that appears in two checkpoint files is an error naming it (each tensor is consumed once)."""
    tensors = read_checkpoint(tiny_model_dir)
    twice = "model.layers.0.mlp.gate_proj.weight"
    broken = write_checkpoint(tiny_model_dir, tmp_path / "twice", tensors, {twice: tensors[twice]})
    with pytest.raises(CheckpointMismatchError, match=twice.replace(".", r"\.")):
        load_qwen3(broken, fused_layers=True)


@pytest.mark.hint(4)
def test_wrongly_shaped_projection_is_named(tiny_model_dir, tmp_path):
    """A v_proj of the wrong shape makes the loader raise CheckpointMismatchError naming v_proj."""
    tensors = read_checkpoint(tiny_model_dir)
    name = "model.layers.1.self_attn.v_proj.weight"
    tensors[name] = torch.zeros(tensors[name].shape[0] + 16, tensors[name].shape[1])
    broken = write_checkpoint(tiny_model_dir, tmp_path / "shape", tensors)
    with pytest.raises(CheckpointMismatchError, match=name.replace(".", r"\.")):
        load_qwen3(broken, fused_layers=True)


@pytest.mark.hint(4)
def test_tied_checkpoint_with_an_lm_head_copy_loads(tiny_model_dir, tmp_path):
    """A tied checkpoint that also stores lm_head.weight loads; the head stays the embedding."""
    tensors = read_checkpoint(tiny_model_dir)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    with_head = write_checkpoint(tiny_model_dir, tmp_path / "with-head", tensors)
    model = load_qwen3(with_head, fused_layers=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, tensors["model.embed_tokens.weight"])


def toy_model(nn):
    """attn.qk (fused q and k), attn.q_norm and attn.qk_norm, built with ``nn`` (the learner side's torch.nn)."""
    attn = nn.ModuleDict({"qk": MergedColumnParallelLinear(2, [2, 2]), "q_norm": nn.Linear(2, 2, bias=False),
                          "qk_norm": nn.Linear(2, 2, bias=False)})  # qk_norm contains "qk" but is not it
    model = nn.ModuleDict({"attn": attn})
    model.packed_modules_mapping = {"q": ("qk", 0), "k": ("qk", 1)}
    return model


@pytest.mark.hint(3)
def test_plan_matches_whole_module_names_only(learner_import):
    """checkpoint_plan maps q -> (qk, 0) and k -> (qk, 1) but leaves q_norm and qk_norm alone (whole names only)."""
    assert checkpoint_plan(toy_model(learner_import("torch.nn"))) == {
        "attn.q.weight": ("attn.qk.weight", 0),
        "attn.k.weight": ("attn.qk.weight", 1),
        "attn.q_norm.weight": ("attn.q_norm.weight", None),
        "attn.qk_norm.weight": ("attn.qk_norm.weight", None),
    }


@pytest.mark.hint(2)
def test_qkv_loader_fills_bias_blocks_too():
    """With bias=True, each projection's bias lands in the same block of the fused bias as its weight rows."""
    layer = QKVParallelLinear(hidden_size=4, head_dim=3, total_num_heads=2, total_num_kv_heads=1, bias=True)
    biases = {"q": torch.arange(6.0), "k": torch.arange(10.0, 13.0), "v": torch.arange(20.0, 23.0)}
    for shard_id, bias in biases.items():
        layer.bias.weight_loader(layer.bias, bias, shard_id)
    assert torch.equal(layer.bias, torch.cat([biases["q"], biases["k"], biases["v"]]))


@pytest.mark.hint(1)
def test_qkv_loader_with_three_query_heads_per_kv_head():
    """QKV blocks are right for 6 query heads, 2 KV heads and head_dim 4 (q: 24 rows, k and v: 8 each)."""
    layer = QKVParallelLinear(hidden_size=5, head_dim=4, total_num_heads=6, total_num_kv_heads=2)
    q, k, v = torch.randn(24, 5), torch.randn(8, 5), torch.randn(8, 5)
    for shard_id, tensor in zip("kvq", (k, v, q)):
        layer.weight.weight_loader(layer.weight, tensor, shard_id)
    assert torch.equal(layer.weight, torch.cat([q, k, v]))
    assert layer.weight.shape == (40, 5)


@pytest.mark.hint(1)
def test_merged_loader_with_unequal_parts():
    """MergedColumnParallelLinear with output_sizes [3, 5] puts part 1 at rows 3..7."""
    layer = MergedColumnParallelLinear(input_size=2, output_sizes=[3, 5])
    first, second = torch.randn(3, 2), torch.randn(5, 2)
    layer.weight.weight_loader(layer.weight, second, 1)
    layer.weight.weight_loader(layer.weight, first, 0)
    assert torch.equal(layer.weight, torch.cat([first, second]))
