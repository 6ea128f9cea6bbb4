"""Lesson 3: ``load_weights``/``load_qwen3`` read the safetensors checkpoint into our module.

The proof is logit equivalence with transformers in float32, for a checkpoint whose
lm_head is tied to the embedding and for one with its own lm_head.
"""

import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from aios.fixtures import make_model
from aios.models.qwen3 import Qwen3ForCausalLM
from aios.utils.hf_config import load_model_config
from aios.utils.loader import CheckpointMismatchError, load_qwen3, load_weights

PROMPTS = ["Hello world", "The quick brown fox jumps over the lazy dog", "a", "1 2 3 4 5 6 7 8 9 10"]


def checkpoint_tensors(model_dir) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            tensors.update({name: f.get_tensor(name) for name in f.keys()})
    return tensors


def logits_pair(model_dir, text):
    """(our logits, transformers' logits), each [tokens, vocab] in float32."""
    ids = AutoTokenizer.from_pretrained(model_dir)(text)["input_ids"]
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ours = load_qwen3(model_dir, dtype=torch.float32)
    with torch.no_grad():
        expected = hf(torch.tensor([ids]), use_cache=False).logits[0]
        got = ours.compute_logits(ours(torch.tensor(ids), torch.arange(len(ids))))
    return got, expected


@pytest.fixture(scope="module")
def untied_model_dir(tmp_path_factory):
    return make_model("tiny", tmp_path_factory.mktemp("l03") / "tiny-untied", tie_word_embeddings=False)


@pytest.mark.hint(4)
@pytest.mark.parametrize("text", PROMPTS)
def test_logits_match_hf_tied(tiny_model_dir, text):
    """load_qwen3 + our forward give transformers' logits (fp32, atol 1e-4) on a tied checkpoint."""
    got, expected = logits_pair(tiny_model_dir, text)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.hint(4)
@pytest.mark.parametrize("text", PROMPTS[:2])
def test_logits_match_hf_untied(untied_model_dir, text):
    """With tie_word_embeddings=False the checkpoint's own lm_head.weight is loaded: logits still match."""
    assert "lm_head.weight" in checkpoint_tensors(untied_model_dir)
    got, expected = logits_pair(untied_model_dir, text)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.hint(4)
def test_load_weights_fills_every_parameter(untied_model_dir):
    """After load_weights every parameter holds its checkpoint tensor (none left at its initial value)."""
    model = Qwen3ForCausalLM(load_model_config(untied_model_dir))
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(float("nan"))
    load_weights(model, untied_model_dir)
    tensors = checkpoint_tensors(untied_model_dir)
    for name, param in model.named_parameters():
        assert not param.isnan().any(), f"{name} was never filled"
        torch.testing.assert_close(param.detach(), tensors[name], atol=0, rtol=0, msg=f"{name} differs")


def doctored_checkpoint(source, target, edit):
    """Copy a checkpoint, then rewrite its weights with ``edit(tensors)``."""
    shutil.copytree(source, target)
    tensors = checkpoint_tensors(target)
    edit(tensors)
    for path in target.glob("*.safetensors"):
        path.unlink()
    save_file(tensors, str(target / "model.safetensors"))
    return target


@pytest.mark.hint(4)
def test_missing_tensor_is_named(tiny_model_dir, tmp_path):
    """A checkpoint without one tensor raises CheckpointMismatchError naming that parameter."""
    missing = "model.layers.1.mlp.up_proj.weight"
    broken = doctored_checkpoint(tiny_model_dir, tmp_path / "missing", lambda t: t.pop(missing))
    model = Qwen3ForCausalLM(load_model_config(broken))
    with pytest.raises(CheckpointMismatchError, match=missing.replace(".", r"\.")):
        load_weights(model, broken)


@pytest.mark.hint(4)
def test_extra_tensor_is_named(tiny_model_dir, tmp_path):
    """A checkpoint tensor the model has no place for raises CheckpointMismatchError naming it."""
    extra = "model.layers.0.self_attn.rotary_extra.weight"
    broken = doctored_checkpoint(tiny_model_dir, tmp_path / "extra", lambda t: t.update({extra: torch.zeros(3)}))
    model = Qwen3ForCausalLM(load_model_config(broken))
    with pytest.raises(CheckpointMismatchError, match=extra.replace(".", r"\.")):
        load_weights(model, broken)
