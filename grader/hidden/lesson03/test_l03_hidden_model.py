"""Hidden lesson 3 tests: our Qwen3 against transformers on other checkpoints, longer prompts and every layer."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from aios.fixtures import make_model
from aios.models.qwen3 import Qwen3ForCausalLM
from aios.utils.hf_config import load_model_config
from aios.utils.loader import load_qwen3


@pytest.fixture(scope="module")
def seven_dir(tmp_path_factory):
    """Another seed, untied, three layers: nothing about the default fixture can be hard-coded."""
    return make_model("tiny", tmp_path_factory.mktemp("l03h") / "tiny-s7", seed=7, tie_word_embeddings=False,
                      num_hidden_layers=3)


def hf_logits(model_dir, ids: list[int]) -> torch.Tensor:
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(torch.tensor([ids]), use_cache=False).logits[0]


def our_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model.compute_logits(model(torch.tensor(ids), torch.arange(len(ids))))


def test_long_prompt_logits_match_hf(seven_dir):
    """A 300-token prompt: logits at every position match transformers (RoPE at far positions, long causal mask)."""
    ids = torch.randint(0, 500, (300,), generator=torch.Generator().manual_seed(0)).tolist()
    torch.testing.assert_close(our_logits(load_qwen3(seven_dir), ids), hf_logits(seven_dir, ids), atol=1e-4, rtol=1e-4)


def test_single_token_prompt_logits_match_hf(seven_dir):
    """A one-token prompt works (shapes with tokens = 1) and matches transformers."""
    torch.testing.assert_close(our_logits(load_qwen3(seven_dir), [42]), hf_logits(seven_dir, [42]), atol=1e-4,
                               rtol=1e-4)


def test_small_preset_logits_match_hf(small_model_dir):
    """The small preset (8 query heads sharing 4 KV heads, head_dim 32, untied) matches transformers."""
    ids = torch.randint(0, 2000, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    torch.testing.assert_close(our_logits(load_qwen3(small_model_dir), ids), hf_logits(small_model_dir, ids),
                               atol=1e-4, rtol=1e-4)


@pytest.mark.hint(1)
def test_every_layer_output_matches_hf(seven_dir):
    """The hidden states after each decoder layer equal transformers' (find the first layer that drifts)."""
    hf = AutoModelForCausalLM.from_pretrained(seven_dir, dtype=torch.float32).eval()
    ours = Qwen3ForCausalLM(load_model_config(seven_dir))
    ours.load_state_dict(hf.state_dict())
    ids = torch.randint(0, 500, (17,), generator=torch.Generator().manual_seed(2))
    hf_outs, our_outs = [], []
    handles = [layer.register_forward_hook(lambda m, a, out: hf_outs.append(out[0])) for layer in hf.model.layers]
    handles += [layer.register_forward_hook(lambda m, a, out: our_outs.append(out[0])) for layer in ours.model.layers]
    try:
        with torch.no_grad():
            hf(ids[None], use_cache=False)
            ours(ids, torch.arange(len(ids)))
    finally:
        for handle in handles:
            handle.remove()
    assert len(our_outs) == len(hf_outs) == 3
    for index, (got, expected) in enumerate(zip(our_outs, hf_outs)):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4, msg=f"layer {index} drifts")


def test_explicit_positions_match_hf_position_ids(seven_dir):
    """The model rotates by the positions it is given (not 0..n-1): matches transformers with the same position_ids."""
    hf = AutoModelForCausalLM.from_pretrained(seven_dir, dtype=torch.float32).eval()
    model = load_qwen3(seven_dir)
    ids = torch.tensor([5, 6, 7, 8, 9])
    positions = torch.tensor([3, 4, 9, 30, 31])
    with torch.no_grad():
        got = model.compute_logits(model(ids, positions))
        expected = hf(ids[None], attention_mask=torch.ones(1, 5, dtype=torch.long), position_ids=positions[None],
                      use_cache=False).logits[0]
        default = model.compute_logits(model(ids, torch.arange(5)))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, default, atol=1e-3), "positions must reach the rotary embedding"
