"""Lesson 10 (hidden): the fused model against transformers and against the unfused model, other shapes."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from aios.fixtures import make_model
from aios.utils.loader import load_qwen3

IDS = [1, 5, 9, 200, 33, 7, 7, 7, 120, 64, 3, 2, 480, 11]


@pytest.fixture(scope="module")
def untied_mha_dir(tmp_path_factory):
    """Tiny shapes with its own lm_head and as many KV heads as query heads (no grouping)."""
    return make_model("tiny", tmp_path_factory.mktemp("l10h") / "untied-mha", seed=3,
                      tie_word_embeddings=False, num_key_value_heads=4)


def our_logits(model_dir, **options) -> torch.Tensor:
    model = load_qwen3(model_dir, dtype=torch.float32, **options)
    with torch.no_grad():  # not inference_mode: its tensors cannot be shared with the learner worker
        return model.compute_logits(model(torch.tensor(IDS), torch.arange(len(IDS))))


@pytest.mark.hint(5)
def test_fused_logits_match_transformers(untied_mha_dir):
    """The fused model's logits equal transformers' Qwen3ForCausalLM (fp32, atol 1e-4), untied lm_head, 4 KV heads."""
    hf = AutoModelForCausalLM.from_pretrained(untied_mha_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = hf(torch.tensor([IDS]), use_cache=False).logits[0]
    torch.testing.assert_close(our_logits(untied_mha_dir, fused_layers=True), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.hint(5)
def test_fused_with_fused_residual_norm_matches_unfused(untied_mha_dir):
    """fused_layers=True with fuse_residual_norm=True (the engine's setting) gives the lesson-3 logits (atol 1e-5)."""
    torch.testing.assert_close(
        our_logits(untied_mha_dir, fused_layers=True, fuse_residual_norm=True),
        our_logits(untied_mha_dir), rtol=0, atol=1e-5,
    )


@pytest.mark.hint(5)
def test_fused_model_in_bfloat16_stays_close(tiny_model_dir):
    """In bfloat16 the fused and unfused models pick the same next token at every position."""
    fused = load_qwen3(tiny_model_dir, dtype=torch.bfloat16, fused_layers=True)
    plain = load_qwen3(tiny_model_dir, dtype=torch.bfloat16)
    with torch.no_grad():  # not inference_mode: its tensors cannot be shared with the learner worker
        ids, positions = torch.tensor(IDS), torch.arange(len(IDS))
        a = fused.compute_logits(fused(ids, positions))
        b = plain.compute_logits(plain(ids, positions))
    assert a.dtype == torch.float32
    assert torch.equal(a.argmax(-1), b.argmax(-1))
