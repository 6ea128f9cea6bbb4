"""Hidden lesson 2 tests: the transformers baseline on another checkpoint, stopping rules and templates."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from aios.fixtures import make_model
from aios.hf_baseline import chat_prompt, hf_greedy_generate, load_hf_model


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory):
    """A tiny checkpoint with another seed and untied embeddings: nothing can be hard-coded."""
    return make_model("tiny", tmp_path_factory.mktemp("l02") / "tiny-s7", seed=7, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def hf_model(other_model_dir):
    return AutoModelForCausalLM.from_pretrained(other_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer(other_model_dir):
    return AutoTokenizer.from_pretrained(other_model_dir)


def reference_generate(model, ids, max_new_tokens, eos):
    out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                         pad_token_id=eos)
    return out[0, len(ids):].tolist()


@pytest.mark.hint(1)
def test_load_hf_model_other_checkpoint(other_model_dir, hf_model):
    """load_hf_model loads an untied checkpoint: same logits as transformers, tokenizer round-trips text."""
    model, tokenizer = load_hf_model(other_model_dir)
    assert not model.training
    text = "the cat sat on the mat"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor([ids])).logits, hf_model(torch.tensor([ids])).logits,
                                   atol=0, rtol=0)


@pytest.mark.hint(4)
def test_hf_greedy_generate_stops_after_eos(hf_model, tokenizer):
    """Generation stops right after eos_token_id and includes it in the result."""
    ids = tokenizer("Once upon a time")["input_ids"]
    free = hf_greedy_generate(hf_model, ids, max_new_tokens=8, eos_token_id=None)
    assert len(free) == 8, "with eos_token_id=None generation runs for max_new_tokens"
    stop = free[3]
    ours = hf_greedy_generate(hf_model, ids, max_new_tokens=8, eos_token_id=stop)
    assert ours == free[: free.index(stop) + 1]
    assert ours == reference_generate(hf_model, ids, 8, stop)


@pytest.mark.hint(4)
def test_hf_greedy_generate_zero_and_one_token(hf_model, tokenizer):
    """max_new_tokens=0 returns []; max_new_tokens=1 returns the argmax of the last prompt position."""
    ids = tokenizer("Hello")["input_ids"]
    assert hf_greedy_generate(hf_model, ids, max_new_tokens=0) == []
    with torch.no_grad():
        expected = int(hf_model(torch.tensor([ids])).logits[0, -1].argmax())
    assert hf_greedy_generate(hf_model, ids, max_new_tokens=1) == [expected]


@pytest.mark.hint(4)
@pytest.mark.parametrize("prompt", ["Hello world", "Tell me a story about a robot", "x y z"])
def test_hf_greedy_generate_returns_only_new_tokens(hf_model, tokenizer, prompt):
    """The result holds only the generated ids (not the prompt), equal to model.generate, prompt list untouched."""
    ids = tokenizer(prompt)["input_ids"]
    before = list(ids)
    eos = tokenizer.eos_token_id
    ours = hf_greedy_generate(hf_model, ids, max_new_tokens=10, eos_token_id=eos)
    assert ids == before, "do not modify the caller's prompt list"
    assert all(isinstance(t, int) for t in ours)
    assert ours == reference_generate(hf_model, ids, 10, eos)


@pytest.mark.hint(2)
def test_chat_prompt_multi_turn_matches_template(tokenizer):
    """A system + user + assistant + user conversation renders every turn, in order, as the template does."""
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Count to 3"},
    ]
    prompt = chat_prompt(tokenizer, messages)
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == expected
    positions = [prompt.index(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>") for m in messages]
    assert positions == sorted(positions)
    assert prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.hint(2)
def test_chat_prompt_uses_the_checkpoints_own_template(other_model_dir, tmp_path):
    """chat_prompt renders with the checkpoint's chat template, never a hard-coded ChatML string."""
    doctored = tmp_path / "other-template"
    shutil.copytree(other_model_dir, doctored)
    config_path = doctored / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = (
        "{% for m in messages %}[{{ m['role'] | upper }}] {{ m['content'] }} | {% endfor %}"
        "{% if add_generation_prompt %}[ASSISTANT]{% endif %}"
    )
    config_path.write_text(json.dumps(config))
    tokenizer = AutoTokenizer.from_pretrained(doctored)
    prompt = chat_prompt(tokenizer, [{"role": "user", "content": "Hi"}])
    assert prompt == "[USER] Hi | [ASSISTANT]"
