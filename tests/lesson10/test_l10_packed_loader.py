"""Lesson 10: ``checkpoint_plan`` and ``load_packed_weights`` route every checkpoint tensor exactly once.

Each test writes a copy of the tiny checkpoint with one thing wrong and checks that the
error names the tensor at fault.
"""

import shutil
from collections import Counter

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from aios.models.qwen3 import Qwen3ForCausalLM
from aios.utils.hf_config import load_model_config
from aios.utils.loader import CheckpointMismatchError, checkpoint_plan, load_packed_weights, load_qwen3

K_PROJ = "model.layers.1.self_attn.k_proj.weight"


def read_checkpoint(model_dir) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            tensors.update({name: f.get_tensor(name) for name in f.keys()})
    return tensors


def write_checkpoint(source_dir, target_dir, *files: dict[str, torch.Tensor]):
    """Copy the config and tokenizer of ``source_dir``; write each dict as one safetensors file."""
    target_dir.mkdir()
    for path in source_dir.iterdir():
        if path.suffix != ".safetensors":
            shutil.copy(path, target_dir / path.name)
    for i, tensors in enumerate(files):
        save_file(tensors, str(target_dir / f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"))
    return target_dir


def fused_model(model_dir) -> Qwen3ForCausalLM:
    return Qwen3ForCausalLM(load_model_config(model_dir), fused_layers=True)


@pytest.mark.hint(3)
def test_plan_routes_projections_into_fused_parameters(tiny_model_dir):
    """checkpoint_plan maps k_proj to (qkv_proj, "k"), up_proj to (gate_up_proj, 1), a norm to itself (None)."""
    plan = checkpoint_plan(fused_model(tiny_model_dir))
    assert plan[K_PROJ] == ("model.layers.1.self_attn.qkv_proj.weight", "k")
    assert plan["model.layers.0.mlp.up_proj.weight"] == ("model.layers.0.mlp.gate_up_proj.weight", 1)
    assert plan["model.norm.weight"] == ("model.norm.weight", None)


@pytest.mark.hint(3)
def test_plan_expects_exactly_the_checkpoint_tensors(tiny_model_dir):
    """checkpoint_plan's keys are the checkpoint's tensor names (the tied lm_head aside), nothing more or less."""
    expected = set(read_checkpoint(tiny_model_dir)) - {"lm_head.weight"}
    assert set(checkpoint_plan(fused_model(tiny_model_dir))) == expected


@pytest.mark.hint(4)
def test_every_fused_piece_is_loaded_exactly_once(tiny_model_dir, learner_object):
    """load_packed_weights calls each fused parameter's weight_loader once per shard id (q, k, v; 0, 1)."""
    model = fused_model(tiny_model_dir)
    calls = Counter()
    for name, param in model.named_parameters():
        if "qkv_proj" in name or "gate_up_proj" in name:
            original = param.weight_loader

            def counting(p, loaded, shard_id, name=name, original=original):
                calls[name, shard_id] += 1
                original(p, loaded, shard_id)

            learner_object(param).weight_loader = counting
    load_packed_weights(model, tiny_model_dir)
    layers = range(len(model.model.layers))
    expected = Counter({(f"model.layers.{i}.self_attn.qkv_proj.weight", s): 1 for i in layers for s in "qkv"})
    expected.update({(f"model.layers.{i}.mlp.gate_up_proj.weight", s): 1 for i in layers for s in (0, 1)})
    assert calls == expected


@pytest.mark.hint(4)
def test_missing_tensor_is_named(tiny_model_dir, tmp_path):
    """A checkpoint without one k_proj makes load_qwen3(fused_layers=True) raise an error naming that tensor."""
    tensors = read_checkpoint(tiny_model_dir)
    del tensors[K_PROJ]
    broken = write_checkpoint(tiny_model_dir, tmp_path / "missing", tensors)
    with pytest.raises(CheckpointMismatchError, match=K_PROJ.replace(".", r"\.")):
        load_qwen3(broken, fused_layers=True)


@pytest.mark.hint(4)
def test_unexpected_tensor_is_named(tiny_model_dir, tmp_path):
    """A checkpoint tensor the model has no place for is an error naming it."""
    tensors = read_checkpoint(tiny_model_dir)
    tensors["model.layers.0.self_attn.rotary_bonus.weight"] = torch.zeros(3)
    broken = write_checkpoint(tiny_model_dir, tmp_path / "extra", tensors)
    with pytest.raises(CheckpointMismatchError, match=r"rotary_bonus"):
        load_qwen3(broken, fused_layers=True)
