"""Lesson 3: ``generate_no_cache``, the greedy loop on our own model, against transformers."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from aios.generate import generate_no_cache
from aios.hf_baseline import hf_greedy_generate
from aios.utils.loader import load_qwen3


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return hf, load_qwen3(tiny_model_dir, dtype=torch.float32), AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.hint(5)
@pytest.mark.parametrize("prompt", ["Hello world", "The quick brown fox", "<|im_start|>user\nHi<|im_end|>\n"])
def test_generate_no_cache_matches_hf(models, prompt):
    """generate_no_cache yields the same greedy tokens as hf_greedy_generate and model.generate."""
    hf, ours, tokenizer = models
    ids = tokenizer(prompt)["input_ids"]
    eos = tokenizer.eos_token_id
    got = generate_no_cache(ours, ids, max_new_tokens=10, eos_token_id=eos)
    assert got == hf_greedy_generate(hf, ids, max_new_tokens=10, eos_token_id=eos)
    expected = hf.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False, eos_token_id=eos,
                           pad_token_id=eos)[0, len(ids):].tolist()
    assert got == expected


@pytest.mark.hint(5)
def test_generate_no_cache_stops_at_eos(models):
    """Generation stops right after eos_token_id, which is included in the result."""
    _, ours, tokenizer = models
    ids = tokenizer("Hello world")["input_ids"]
    free = generate_no_cache(ours, ids, max_new_tokens=6)
    assert len(free) == 6
    stop = free[2]
    assert generate_no_cache(ours, ids, max_new_tokens=6, eos_token_id=stop) == free[: free.index(stop) + 1]
