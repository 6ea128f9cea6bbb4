"""Lesson 3: our Qwen3 modules, one at a time, against the same modules inside transformers' Qwen3.

Each test copies one transformers submodule's weights into ours (the parameter names
match) and feeds ours exactly the input the transformers module saw during a real
forward pass (caught with a forward hook). transformers adds a batch axis of 1;
ours works on the flat [tokens, hidden] layout.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from aios.models.qwen3 import Qwen3Attention, Qwen3DecoderLayer, Qwen3ForCausalLM, Qwen3MLP
from aios.utils.hf_config import load_model_config

TEXT = "The quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def config(tiny_model_dir):
    return load_model_config(tiny_model_dir)


@pytest.fixture(scope="module")
def input_ids(tiny_model_dir):
    return torch.tensor(AutoTokenizer.from_pretrained(tiny_model_dir)(TEXT)["input_ids"])


def capture_io(hf_model, module, input_ids):
    """Run the transformers model once; return (first input, output) of ``module`` with the batch axis dropped."""
    seen = {}

    def hook(_module, args, kwargs, output):
        seen["input"] = args[0] if args else kwargs["hidden_states"]
        seen["output"] = output[0] if isinstance(output, tuple) else output

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            hf_model(input_ids[None], use_cache=False)
    finally:
        handle.remove()
    return seen["input"][0], seen["output"][0]


@pytest.mark.hint(1)
@pytest.mark.parametrize("layer", [0, 1])
def test_qwen3_mlp_matches_hf(hf_model, config, input_ids, layer):
    """Qwen3MLP.forward gives transformers' MLP output for the same input and weights."""
    hf_mlp = hf_model.model.layers[layer].mlp
    ours = Qwen3MLP(config)
    ours.load_state_dict(hf_mlp.state_dict())
    x, expected = capture_io(hf_model, hf_mlp, input_ids)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.hint(2)
@pytest.mark.parametrize("layer", [0, 1])
def test_qwen3_attention_matches_hf(hf_model, config, input_ids, layer):
    """Qwen3Attention.forward (projections, q/k norm, RoPE, causal GQA, o_proj) matches transformers."""
    hf_attn = hf_model.model.layers[layer].self_attn
    ours = Qwen3Attention(config, layer)
    ours.load_state_dict(hf_attn.state_dict())
    x, expected = capture_io(hf_model, hf_attn, input_ids)
    with torch.no_grad():
        out = ours(torch.arange(len(input_ids)), x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.hint(3)
@pytest.mark.parametrize("layer", [0, 1])
def test_decoder_layer_matches_hf(hf_model, config, input_ids, layer):
    """Qwen3DecoderLayer (unfused) returns (transformers' layer output, None)."""
    hf_layer = hf_model.model.layers[layer]
    ours = Qwen3DecoderLayer(config, layer)
    ours.load_state_dict(hf_layer.state_dict())
    x, expected = capture_io(hf_model, hf_layer, input_ids)
    with torch.no_grad():
        hidden, residual = ours(torch.arange(len(input_ids)), x, None)
    assert residual is None, "the unfused layer carries no separate residual"
    torch.testing.assert_close(hidden, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.hint(1)
def test_model_final_hidden_states_match_hf(hf_model, config, input_ids):
    """Qwen3Model.forward: embed, every layer, final norm, equal to transformers' last_hidden_state."""
    ours = Qwen3ForCausalLM(config)
    ours.load_state_dict(hf_model.state_dict())
    with torch.no_grad():
        hidden = ours(input_ids, torch.arange(len(input_ids)))
        expected = hf_model.model(input_ids[None], use_cache=False).last_hidden_state[0]
    assert hidden.shape == (len(input_ids), config.hidden_size)
    torch.testing.assert_close(hidden, expected, atol=1e-4, rtol=1e-4)
