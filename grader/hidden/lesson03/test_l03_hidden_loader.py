"""Hidden lesson 3 tests: checkpoints split over several files, tied heads stored twice, broken checkpoints."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from aios.models.qwen3 import Qwen3ForCausalLM
from aios.utils.hf_config import load_model_config
from aios.utils.loader import CheckpointMismatchError, load_qwen3, load_weights


def checkpoint_tensors(model_dir) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            tensors.update({name: f.get_tensor(name) for name in f.keys()})
    return tensors


def rewrite(source, target, shards: list[dict[str, torch.Tensor]]):
    """Copy the checkpoint's non-weight files and write ``shards`` as numbered safetensors files."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json"))
    weight_map = {}
    for index, shard in enumerate(shards, start=1):
        name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(target / name))
        weight_map.update({tensor: name for tensor in shard})
    (target / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return target


def logits(model, ids):
    with torch.no_grad():
        return model.compute_logits(model(torch.tensor(ids), torch.arange(len(ids))))


@pytest.mark.hint(4)
def test_sharded_checkpoint_loads_every_file(tiny_model_dir, tmp_path):
    """Weights split over three safetensors files load to the same model as the single-file checkpoint."""
    tensors = checkpoint_tensors(tiny_model_dir)
    names = sorted(tensors)
    shards = [{n: tensors[n] for n in names[i::3]} for i in range(3)]
    sharded = rewrite(tiny_model_dir, tmp_path / "sharded", shards)
    ids = [1, 2, 3, 4, 5, 6]
    torch.testing.assert_close(logits(load_qwen3(sharded), ids), logits(load_qwen3(tiny_model_dir), ids), atol=0, rtol=0)


@pytest.mark.hint(4)
def test_tied_checkpoint_that_also_stores_lm_head(tiny_model_dir, tmp_path):
    """A tied checkpoint that also stores lm_head.weight loads without error; the head stays the embedding."""
    tensors = checkpoint_tensors(tiny_model_dir)
    assert "lm_head.weight" not in tensors
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    doubled = rewrite(tiny_model_dir, tmp_path / "doubled", [tensors])
    model = load_qwen3(doubled)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(model.model.embed_tokens.weight.detach(), tensors["model.embed_tokens.weight"])


@pytest.mark.hint(4)
def test_all_missing_and_extra_tensors_are_named(tiny_model_dir, tmp_path):
    """One error lists every missing parameter and every unexpected tensor, not only the first."""
    tensors = checkpoint_tensors(tiny_model_dir)
    missing = ["model.norm.weight", "model.layers.0.self_attn.k_norm.weight"]
    for name in missing:
        del tensors[name]
    extra = ["model.layers.2.mlp.up_proj.weight", "vision_tower.weight"]
    tensors.update({name: torch.zeros(2, 2) for name in extra})
    broken = rewrite(tiny_model_dir, tmp_path / "broken", [tensors])
    with pytest.raises(CheckpointMismatchError) as info:
        load_weights(Qwen3ForCausalLM(load_model_config(broken)), broken)
    for name in missing + extra:
        assert name in str(info.value), f"the error should name {name}"


@pytest.mark.hint(4)
def test_wrong_shape_is_an_error_naming_the_tensor(tiny_model_dir, tmp_path):
    """A tensor of the wrong shape is refused with an error naming it (never silently broadcast)."""
    tensors = checkpoint_tensors(tiny_model_dir)
    name = "model.layers.1.self_attn.q_norm.weight"
    tensors[name] = torch.ones(1)  # would broadcast into [head_dim] without a shape check
    broken = rewrite(tiny_model_dir, tmp_path / "shape", [tensors])
    with pytest.raises((CheckpointMismatchError, RuntimeError, ValueError), match=name.replace(".", r"\.")):
        load_weights(Qwen3ForCausalLM(load_model_config(broken)), broken)


@pytest.mark.hint(4)
def test_directory_without_weights_is_file_not_found(tiny_model_dir, tmp_path):
    """config.json but no *.safetensors file: FileNotFoundError, not an empty or half-loaded model."""
    empty = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir, empty, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(FileNotFoundError):
        load_weights(Qwen3ForCausalLM(load_model_config(empty)), empty)


@pytest.mark.hint(4)
def test_load_qwen3_bfloat16_converts_every_parameter(tiny_model_dir):
    """load_qwen3(dtype=torch.bfloat16) holds every parameter in bfloat16, each the rounded checkpoint tensor."""
    model = load_qwen3(tiny_model_dir, dtype=torch.bfloat16)
    tensors = checkpoint_tensors(tiny_model_dir)
    for name, param in model.named_parameters():
        assert param.dtype == torch.bfloat16, name
        torch.testing.assert_close(param.detach(), tensors[name].bfloat16(), atol=0, rtol=0)
