"""Lesson 0: is this machine ready for the course?

Lesson 0 has no code to write, so its graded tests check the environment: a recent
enough Python, the four libraries the engine is built on (importable, with their
versions printed), and a tiny Qwen3 checkpoint that can be written and read back
(loading it the transformers way is lesson 2's job, so it is not done here).
Run ``pytest tests/lesson00 -s`` to see the version report.
"""

import importlib
import importlib.metadata
import json
import re
import sys

import pytest

# The grader reads its curriculum with tomllib (Python 3.11+); pyproject.toml says the same.
MIN_PYTHON = (3, 11)

# distribution name -> (import name, oldest version the course accepts, what it is for).
# CI runs the exact versions pinned in requirements-dev.txt.
REQUIRED = {
    "torch": ("torch", "2.2", "tensors and neural-network modules"),
    "safetensors": ("safetensors", "0.4", "reading checkpoint weights"),
    "tokenizers": ("tokenizers", "0.21", "the fast BPE tokenizer"),
    "transformers": ("transformers", "4.56", "the reference Qwen3 implementation"),
}


def version_tuple(version: str) -> tuple[int, ...]:
    """'2.13.0+cpu' -> (2, 13, 0): the leading numeric components."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def test_python_is_recent_enough():
    """Python must be 3.11 or newer (the grader uses tomllib)."""
    print(f"\nPython {sys.version.split()[0]} at {sys.executable}")
    assert sys.version_info[:2] >= MIN_PYTHON, (
        f"Python {sys.version.split()[0]} is too old: the course needs {'.'.join(map(str, MIN_PYTHON))}+"
    )


@pytest.mark.parametrize("distribution", sorted(REQUIRED))
def test_core_library_is_installed(distribution):
    """torch, safetensors, tokenizers and transformers import, at a version the course supports."""
    module_name, minimum, purpose = REQUIRED[distribution]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        pytest.fail(f"{distribution} ({purpose}) cannot be imported: {error}. "
                    f"Install it: pip install -r exercises/lesson00/requirements.txt")
    version = importlib.metadata.version(distribution)
    print(f"\n{distribution:>13} {version:<14} {module.__file__}")
    assert version_tuple(version) >= version_tuple(minimum), (
        f"{distribution} {version} is older than {minimum}, the oldest the course supports ({purpose})"
    )


def test_torch_computes_on_this_machine():
    """torch runs a small float32 matmul correctly and says which devices it can use."""
    import torch

    a = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    b = torch.ones(3, 2)
    torch.testing.assert_close(a @ b, torch.tensor([[3.0, 3.0], [12.0, 12.0]]))
    cuda = torch.cuda.is_available()
    print(f"\ntorch {torch.__version__}: CUDA {'available: ' + torch.cuda.get_device_name(0) if cuda else 'not available'}")


def test_tiny_checkpoint_can_be_made_and_read(tmp_path):
    """aios.fixtures writes a tiny Qwen3 checkpoint whose files read back, and transformers runs a Qwen3 of its shape."""
    import torch
    from safetensors import safe_open
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, Qwen3Config

    from aios.fixtures import make_model

    model_dir = make_model("tiny", tmp_path / "tiny")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (model_dir / name).is_file(), f"{name} was not written"
    config = json.loads((model_dir / "config.json").read_text())
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        embedding = f.get_tensor("model.embed_tokens.weight")
    assert embedding.shape == (config["vocab_size"], config["hidden_size"])

    ids = Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode("Hello, inference engine!").ids
    assert ids and max(ids) < config["vocab_size"]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Qwen3Config(**config)).eval()  # random weights of the same shape
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), config["vocab_size"])
    assert torch.isfinite(logits).all()
