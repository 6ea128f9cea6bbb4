"""Hidden lesson 3 tests: ``generate_no_cache`` on another checkpoint and at its edges."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from aios.fixtures import make_model
from aios.generate import generate_no_cache
from aios.utils.loader import load_qwen3


@pytest.fixture(scope="module")
def small(small_model_dir):
    hf = AutoModelForCausalLM.from_pretrained(small_model_dir, dtype=torch.float32).eval()
    return hf, load_qwen3(small_model_dir, dtype=torch.float32), AutoTokenizer.from_pretrained(small_model_dir)


@pytest.mark.hint(5)
def test_small_preset_generation_matches_hf_generate(small):
    """On the small preset (GQA 8:4, untied) greedy tokens equal model.generate(do_sample=False)."""
    hf, ours, tokenizer = small
    ids = tokenizer("<|im_start|>user\nWhat is paged attention?<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    eos = tokenizer.eos_token_id
    got = generate_no_cache(ours, ids, max_new_tokens=12, eos_token_id=eos)
    expected = hf.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=eos,
                           pad_token_id=eos)[0, len(ids):].tolist()
    assert got == expected


@pytest.mark.hint(5)
def test_generate_no_cache_edges(small):
    """max_new_tokens=0 gives []; the prompt list is left unchanged; results are plain ints."""
    _, ours, tokenizer = small
    ids = tokenizer("Hello")["input_ids"]
    before = list(ids)
    assert generate_no_cache(ours, ids, max_new_tokens=0) == []
    out = generate_no_cache(ours, ids, max_new_tokens=3)
    assert ids == before, "do not modify the caller's prompt list"
    assert len(out) == 3 and all(type(t) is int for t in out)


@pytest.mark.hint(5)
def test_each_step_feeds_the_whole_sequence(small):
    """Step k's token is the argmax of the last position over prompt + the k tokens before it."""
    _, ours, tokenizer = small
    ids = tokenizer("Once upon a time")["input_ids"]
    out = generate_no_cache(ours, ids, max_new_tokens=4)
    for step in range(4):
        seq = torch.tensor(ids + out[:step])
        with torch.no_grad():
            scores = ours.compute_logits(ours(seq, torch.arange(len(seq)))[-1:])
        assert int(scores.argmax()) == out[step], f"step {step}"


@pytest.mark.hint(5)
def test_generation_may_fill_the_whole_context(tmp_path_factory):
    """Positions run 0 .. len - 1, so a forward over exactly max_position_embeddings tokens works."""
    model_dir = make_model("tiny", tmp_path_factory.mktemp("l03") / "tiny-ctx24", seed=3, max_position_embeddings=24)
    ours = load_qwen3(model_dir, dtype=torch.float32)
    prompt = list(range(10, 30))
    out = generate_no_cache(ours, prompt, max_new_tokens=5)  # the last step runs on 24 tokens
    assert len(out) == 5
    with torch.no_grad():
        last = ours.compute_logits(ours(torch.tensor(prompt + out[:4]), torch.arange(24))[-1:])
    assert int(last.argmax()) == out[4]
