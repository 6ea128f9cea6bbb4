"""Lesson 2: run Qwen3 with transformers (``aios/hf_baseline.py``).

The model and tokenizer these tests compare against are loaded with transformers
directly, so a failing test points at the function it names.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from aios.hf_baseline import chat_prompt, hf_greedy_generate, load_hf_model

PROMPTS = ["Hello world", "The quick brown fox", "a"]


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.hint(1)
def test_load_hf_model_gives_eval_model_and_tokenizer(tiny_model_dir, hf_model):
    """load_hf_model returns (model in eval mode, tokenizer) whose logits equal transformers' own load."""
    model, tokenizer = load_hf_model(tiny_model_dir)
    assert not model.training, "call .eval(): inference only"
    assert next(model.parameters()).dtype == torch.float32
    ids = tokenizer("Hello world")["input_ids"]
    assert isinstance(ids, list) and len(ids) > 0
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits
        ref = hf_model(torch.tensor([ids])).logits
    torch.testing.assert_close(ours, ref, atol=0, rtol=0)


@pytest.mark.hint(1)
def test_load_hf_model_honours_dtype(tiny_model_dir):
    """load_hf_model(dtype=torch.bfloat16) loads every parameter in bfloat16."""
    model, _ = load_hf_model(tiny_model_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.hint(1)
def test_load_hf_model_wrong_path_is_a_clear_error(tiny_model_dir, tmp_path):
    """A real checkpoint loads; a directory without config.json raises FileNotFoundError naming it."""
    model, tokenizer = load_hf_model(tiny_model_dir)
    assert model is not None and tokenizer is not None
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_model(tmp_path / "no-such-model")


@pytest.mark.hint(2)
def test_chat_prompt_follows_the_chatml_template(tokenizer):
    """chat_prompt renders <|im_start|>user ...<|im_end|> and ends with the assistant header."""
    prompt = chat_prompt(tokenizer, [{"role": "user", "content": "What is a KV cache?"}])
    assert isinstance(prompt, str)
    assert prompt.startswith("<|im_start|>user\n")
    assert "What is a KV cache?<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.hint(3)
@pytest.mark.parametrize("prompt", PROMPTS)
def test_hf_greedy_generate_matches_generate(hf_model, tokenizer, prompt):
    """hf_greedy_generate gives exactly the tokens of model.generate(do_sample=False)."""
    ids = tokenizer(prompt)["input_ids"]
    eos = tokenizer.eos_token_id
    ours = hf_greedy_generate(hf_model, ids, max_new_tokens=12, eos_token_id=eos)
    expected = hf_model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=eos,
                                 pad_token_id=eos)[0, len(ids):].tolist()
    assert ours == expected
