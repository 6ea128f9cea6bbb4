"""Lesson 18's plumbing (no lesson stubs it): which quantization settings the engine refuses, and how.

Unsupported combinations must be clear errors before anything is loaded, never wrong
output. These checks live in ``aios.layers.quantization`` outside the solution regions, so
they are tested here rather than in the lesson's suites (whose every test must fail when
the lesson is stubbed).
"""

import json

import pytest
import torch

from aios.layers import quantization as qz
from aios.layers.linear import RowParallelLinear
from aios.llm import LLM


def with_quantization_config(source, folder, quantization_config):
    """A copy of ``source``'s config.json (no weights: the engine must refuse before it reads them)."""
    folder.mkdir()
    config = json.loads((source / "config.json").read_text())
    config["quantization_config"] = quantization_config
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_engine_refuses_unsupported_combinations(tiny_model_dir):
    """Unknown methods, quantization without fused layers, FP8 weights without an FP8 GPU, an unknown
    kv_cache_dtype: ValueErrors (an FP8 KV cache runs on the CPU: tests/infra/test_fp8_kv_options.py)."""
    with pytest.raises(ValueError, match="quantization must be"):
        LLM(tiny_model_dir, quantization="int3")
    with pytest.raises(ValueError, match="fused"):
        LLM(tiny_model_dir, quantization="int8", fused_layers=False)
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        LLM(tiny_model_dir, kv_cache_dtype="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="FP8"):
            LLM(tiny_model_dir, quantization="fp8")


def test_pre_quantized_checkpoint_cannot_load_as_another_method(tiny_model_dir, tmp_path):
    """An AWQ checkpoint asked to load as int8 is refused, naming what it is."""
    folder = with_quantization_config(tiny_model_dir, tmp_path / "awq", {
        "quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm"})
    with pytest.raises(ValueError, match="already quantized"):
        LLM(folder, quantization="int8")
    assert qz.read_quantization_config(folder) == qz.QuantSpec("int4", group_size=32, pre_quantized=True)


@pytest.mark.parametrize("quantization_config,word", [
    ({"quant_method": "gptq", "bits": 4}, "gptq"),
    ({"quant_method": "awq", "bits": 8, "group_size": 128}, "4-bit"),
    ({"quant_method": "fp8", "weight_block_size": [128, 64]}, "square"),
])
def test_unreadable_checkpoint_formats_are_named(tiny_model_dir, tmp_path, quantization_config, word):
    """A quantization_config the engine cannot read is a ValueError that names the problem."""
    folder = with_quantization_config(tiny_model_dir, tmp_path / word, quantization_config)
    with pytest.raises(ValueError, match=word):
        qz.read_quantization_config(folder)


def test_int4_tensor_parallel_that_splits_a_group_is_refused(tiny_model_dir, tmp_path):
    """INT4 group 64 with tensor_parallel_size=2 on a model whose row-parallel layers have 64 inputs: ValueError."""
    folder = with_quantization_config(tiny_model_dir, tmp_path / "awq64", {
        "quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True, "version": "gemm"})
    from aios.config import Config

    with pytest.raises(ValueError, match="group"):
        Config(str(folder), device="cpu", tensor_parallel_size=2)


def test_layer_shapes_the_formats_cannot_hold():
    """A group that does not divide a layer's (or a rank's) inputs, or FP8 pieces off the block grid: ValueErrors."""
    with pytest.raises(ValueError, match="group"):
        qz.QuantizedLinear.like(RowParallelLinear(64, 32), qz.QuantSpec("int4"))
    with pytest.raises(ValueError, match="group"):
        qz.QuantizedLinear.like(RowParallelLinear(64, 32, tp_rank=0, tp_size=4), qz.QuantSpec("int4", group_size=32))
    with pytest.raises(ValueError, match="group"):
        qz.check_int4_shape(96, 8, 64)
    with pytest.raises(ValueError, match="multiple of 8"):
        qz.check_int4_shape(64, 12, 32)
    from aios.layers.linear import QKVParallelLinear

    with pytest.raises(ValueError, match="multiple of 128"):
        qz.QuantizedLinear.like(QKVParallelLinear(128, 16, 4, 2), qz.QuantSpec("fp8"))


def test_quantize_command_refuses_bad_input(tiny_model_dir, tmp_path, learner_import):
    """`python -m aios quantize` on a folder without config.json, or into a non-empty folder, exits 2 with a message."""
    import sys

    run = learner_import("subprocess").run
    missing = run([sys.executable, "-m", "aios", "quantize", str(tmp_path / "nothing"), str(tmp_path / "out"),
                   "--method", "int8"], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "config.json" in missing.stderr
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    full = run([sys.executable, "-m", "aios", "quantize", str(tiny_model_dir), str(busy), "--method", "int8"],
               capture_output=True, text=True, timeout=120)
    assert full.returncode == 2 and "not empty" in full.stderr


@pytest.mark.parametrize("method,tensor", [("int4", "qweight"), ("int8", "weight_scale")])
def test_make_model_quantize_writes_a_pre_quantized_checkpoint(tmp_path, learner_import, method, tensor):
    """`make-model tiny DIR --quantize M` writes M's quantization_config and tensors, and the engine loads it."""
    import json
    import sys

    from safetensors import safe_open

    out = tmp_path / method
    done = learner_import("subprocess").run(
        [sys.executable, "-m", "aios", "make-model", "tiny", str(out), "--quantize", method, "--group-size", "32"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert method in done.stdout
    config = json.loads((out / "config.json").read_text())
    assert qz.read_quantization_config(out).method == method, config.get("quantization_config")
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
    assert f"model.layers.0.mlp.down_proj.{tensor}" in names
    assert "model.layers.0.mlp.down_proj.weight" not in names or method == "int8"
    llm = LLM(out, device="cpu", max_model_len=64, num_kvcache_blocks=16)
    assert llm.config.quantization == method
