"""Hidden lesson 0 tests: the rest of the toolchain the later lessons rely on."""

import importlib
import os
import sys

import pytest


@pytest.mark.parametrize("module", ["pytest", "hypothesis", "numpy", "xxhash", "tqdm"])
def test_course_tooling_imports(module):
    """The test and helper libraries later lessons use (hypothesis, numpy, xxhash, tqdm) are installed."""
    try:
        importlib.import_module(module)
    except ImportError as error:
        pytest.fail(f"{module} is missing ({error}): pip install -r requirements-dev.txt")


def test_aios_package_comes_from_the_selected_tree():
    """`import aios` works and resolves to the tree AIOS_IMPL selects (your aios/ by default)."""
    import aios

    assert aios.__file__ is not None
    assert os.path.basename(os.path.dirname(aios.__file__)) == "aios"


def test_make_model_command_line(tmp_path, learner_import):
    """`python -m aios make-model tiny DIR` writes a checkpoint from the shell."""
    out = tmp_path / "cli-tiny"
    command = [sys.executable, "-m", "aios", "make-model", "tiny", str(out)]
    result = learner_import("subprocess").run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()


def test_tokenizer_knows_the_chat_special_tokens(tiny_model_dir):
    """The fixture tokenizer round-trips text and keeps <|im_start|> / <|im_end|> as single tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "Inference engines schedule requests like an OS schedules processes."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    for special in ("<|im_start|>", "<|im_end|>"):
        ids = tokenizer(special)["input_ids"]
        assert len(ids) == 1, f"{special} should be one token, got {ids}"


def test_small_checkpoint_loads_with_transformers(small_model_dir):
    """The cached `small` demo checkpoint loads with transformers and predicts finite logits."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(small_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape[:2] == (1, 3) and torch.isfinite(logits).all()
