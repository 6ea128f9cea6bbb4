"""Lesson 18: quantized checkpoints on disk, in the loader, in the engine — and what they cost in quality.

The checkpoints are written in exactly the layouts published AWQ and Qwen3-FP8 checkpoints
use (names, dtypes, shapes, packing); the quality bounds are measured on the trained model
(assets/aios-tiny-lm) over held-out text and written in exercises/lesson18/README.md.
"""

import json
import sys

import pytest
import torch
from l18_quality import TRAINED, compare, document_logits, held_out_documents
from safetensors import safe_open

from aios.config import features_up_to
from aios.llm import LLM
from aios.sampling_params import SamplingParams
from aios.utils.loader import load_qwen3
from aios.utils.quantize_checkpoint import quantize_checkpoint

#: Per method: most mean KL divergence (nats per token) from the float32 model, least top-1 agreement,
#: most perplexity ratio, on 12 held-out fortunes (README, "What it costs").
QUALITY_BOUNDS = {
    "int8": {"kl": 0.005, "top1": 0.93, "ppl_ratio": 1.02},
    "fp8": {"kl": 0.04, "top1": 0.85, "ppl_ratio": 1.04},
    "int4": {"kl": 0.40, "top1": 0.55, "ppl_ratio": 1.10},
}


@pytest.fixture(scope="module")
def documents():
    return held_out_documents(count=12, max_tokens=64)


@pytest.fixture(scope="module")
def float_logits(documents):
    return document_logits(load_qwen3(TRAINED, torch.float32, fused_layers=True), documents)


def tensors_of(folder) -> dict:
    with safe_open(str(folder / "model.safetensors"), framework="pt", device="cpu") as f:
        return {name: f.get_tensor(name) for name in f.keys()}


@pytest.mark.hint(3)
def test_int4_checkpoint_has_awq_names_dtypes_and_shapes(tiny_model_dir, tmp_path):
    """quantize_checkpoint(..., "int4") writes AWQ's qweight/qzeros/scales per projection and its quantization_config."""
    out = quantize_checkpoint(tiny_model_dir, tmp_path / "awq", "int4", group_size=32)
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "awq" and config["bits"] == 4 and config["group_size"] == 32
    assert config["zero_point"] is True and config["version"] == "gemm"
    tensors = tensors_of(out)
    prefix = "model.layers.1.mlp.down_proj"  # [hidden 64, intermediate 128]
    assert tensors[f"{prefix}.qweight"].dtype == torch.int32 and tensors[f"{prefix}.qweight"].shape == (128, 8)
    assert tensors[f"{prefix}.qzeros"].dtype == torch.int32 and tensors[f"{prefix}.qzeros"].shape == (4, 8)
    assert tensors[f"{prefix}.scales"].dtype == torch.float16 and tensors[f"{prefix}.scales"].shape == (4, 64)
    assert f"{prefix}.weight" not in tensors and "model.norm.weight" in tensors
    assert tensors["model.layers.0.self_attn.k_proj.qweight"].shape == (64, 4)


@pytest.mark.hint(4)
def test_fp8_checkpoint_has_qwen3_fp8_names_dtypes_and_shapes(tmp_path):
    """quantize_checkpoint(..., "fp8") writes e4m3 weights with [ceil(out/128), ceil(in/128)] weight_scale_inv."""
    out = quantize_checkpoint(TRAINED, tmp_path / "fp8", "fp8")
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config == {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                      "weight_block_size": [128, 128]}
    tensors = tensors_of(out)
    weight = tensors["model.layers.0.mlp.gate_proj.weight"]  # [512, 256]
    assert weight.dtype == torch.float8_e4m3fn and weight.shape == (512, 256)
    scale_inv = tensors["model.layers.0.mlp.gate_proj.weight_scale_inv"]
    assert scale_inv.dtype == torch.float32 and scale_inv.shape == (4, 2)
    assert tensors["model.embed_tokens.weight"].dtype == torch.float32


@pytest.mark.hint(5)
@pytest.mark.parametrize("method", ["int8", "int4"])
def test_pre_quantized_checkpoint_loads_as_load_time_quantization(method, tmp_path):
    """A checkpoint written by quantize_checkpoint loads as it is and gives the logits of quantizing at load time."""
    out = quantize_checkpoint(TRAINED, tmp_path / method, method)
    ids = [5, 17, 300, 42, 7, 99, 1000, 3]
    docs = [ids]
    loaded = document_logits(load_qwen3(out, torch.float32, fused_layers=True), docs)[0]
    at_load = document_logits(load_qwen3(TRAINED, torch.float32, fused_layers=True, quantization=method), docs)[0]
    torch.testing.assert_close(loaded, at_load, rtol=0, atol=1e-5)


@pytest.mark.hint(7)
@pytest.mark.parametrize("method", ["int8", "fp8", "int4"])
def test_quantized_model_quality_on_held_out_text(method, documents, float_logits):
    """KL divergence, top-1 agreement and perplexity of the quantized trained model stay within the README's bounds."""
    model = load_qwen3(TRAINED, torch.float32, fused_layers=True, quantization=method)
    figures = compare(float_logits, document_logits(model, documents), documents)
    bounds = QUALITY_BOUNDS[method]
    print(method, figures)
    assert figures["kl"] <= bounds["kl"], figures
    assert figures["top1"] >= bounds["top1"], figures
    assert figures["ppl_candidate"] <= figures["ppl_reference"] * bounds["ppl_ratio"], figures


@pytest.mark.hint(7)
def test_engine_with_int8_generates_like_the_float_engine():
    """LLM(quantization="int8") on the trained model: greedy completions mostly equal the float engine's."""
    prompts = ["Once upon a time", "The best thing about", "You will"]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    options = {**features_up_to(15), "attention_backend": "torch", "max_num_seqs": 4, "max_model_len": 128,
               "num_kvcache_blocks": 64}
    results = {}
    for quantization in (None, "int8"):
        llm = LLM(TRAINED, **options, quantization=quantization)
        assert llm.config.quantization == quantization
        results[quantization] = [out["token_ids"] for out in llm.generate(prompts, params, use_tqdm=False)]
    same = sum(a == b for seq_a, seq_b in zip(results[None], results["int8"]) for a, b in zip(seq_a, seq_b))
    assert same >= 0.8 * sum(map(len, results[None])), results


def test_quantize_command_line(tiny_model_dir, tmp_path, learner_import):
    """`python -m aios quantize SRC DST --method int4 --group-size 32` writes a checkpoint the engine loads."""
    out = tmp_path / "cli-int4"
    command = [sys.executable, "-m", "aios", "quantize", str(tiny_model_dir), str(out), "--method", "int4",
               "--group-size", "32"]
    result = learner_import("subprocess").run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "awq"
    bad = learner_import("subprocess").run(command[:-1] + ["48"] + ["--force"], capture_output=True, text=True,
                                           timeout=300)
    assert bad.returncode == 2 and "group" in bad.stderr
