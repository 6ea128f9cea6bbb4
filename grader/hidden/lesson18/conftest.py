"""Fixtures of lesson 18's hidden tests: the trained model, held-out text, and an AWQ writer of the tests' own."""

from pathlib import Path

import pytest
import torch
from h18_helpers import awq_tensors, run_documents

from grader.remote.client import learner_readable

ROOT = Path(__file__).resolve().parents[3]
TRAINED = learner_readable(ROOT / "assets" / "aios-tiny-lm")  # a copy the learner's code can read when sandboxed


@pytest.fixture(scope="session")
def trained_dir() -> Path:
    return TRAINED


@pytest.fixture(scope="session")
def held_out_documents():
    """Held-out fortunes 12..23 (the visible tests use 0..11), as token ids, at most 64 tokens each."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(TRAINED / "tokenizer.json"))
    fortunes = []
    for chunk in (ROOT / "assets" / "corpus" / "fortunes.txt").read_text(encoding="utf-8").split("\n%\n"):
        if chunk.startswith("%% "):
            chunk = chunk.partition("\n")[2]
        if chunk.strip():
            fortunes.append(chunk.strip())
    return [tokenizer.encode(text + "<|endoftext|>").ids[:64] for text in fortunes[::25][12:24]]


@pytest.fixture(scope="session")
def float_reference(held_out_documents):
    """The float32 trained model's logits on the held-out documents."""
    from aios.utils.loader import load_qwen3

    return run_documents(load_qwen3(TRAINED, torch.float32, fused_layers=True), held_out_documents)


@pytest.fixture(scope="session")
def awq_checkpoint(tmp_path_factory, tiny_model_dir):
    """The tiny model as an AWQ checkpoint (group 32) made by the tests' own packer; returns (dir, dense weights)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    out = tmp_path_factory.mktemp("awq-tiny")
    tensors, dense = {}, {}
    with safe_open(str(Path(tiny_model_dir) / "model.safetensors"), framework="pt", device="cpu") as f:
        for i, name in enumerate(sorted(f.keys())):
            tensor = f.get_tensor(name)
            if name.startswith("model.layers.") and name.endswith("_proj.weight"):
                module = name.removesuffix(".weight")
                packed, dense[module] = awq_tensors(tensor, 32, seed=i)
                tensors.update({f"{module}.{key}": value for key, value in packed.items()})
            else:
                tensors[name] = tensor
    save_file(tensors, str(out / "model.safetensors"))
    for path in Path(tiny_model_dir).iterdir():
        if path.is_file() and path.suffix != ".safetensors":
            (out / path.name).write_bytes(path.read_bytes())
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True,
                                     "version": "gemm"}
    (out / "config.json").write_text(json.dumps(config))
    return out, dense
