"""Lesson 18 (hidden): a checkpoint packed by the tests' own AWQ writer, more held-out text, engine edge cases."""

import importlib.util

import pytest
import torch
from h18_helpers import quality, run_documents

from aios.config import features_up_to
from aios.llm import LLM
from aios.sampling_params import SamplingParams
from aios.utils.loader import load_qwen3
from aios.utils.quantize_checkpoint import quantize_checkpoint

BOUNDS = {"int8": {"kl": 0.005, "top1": 0.93, "ppl_ratio": 1.02},
          "fp8": {"kl": 0.04, "top1": 0.85, "ppl_ratio": 1.04},
          "int4": {"kl": 0.40, "top1": 0.55, "ppl_ratio": 1.10}}


@pytest.mark.hint(5)
def test_loader_reads_an_awq_checkpoint_packed_by_someone_else(awq_checkpoint):
    """An AWQ checkpoint written bit by bit by the tests (not by quantize_checkpoint) loads into the right weights."""
    folder, dense = awq_checkpoint
    model = load_qwen3(folder, torch.float32, fused_layers=True)
    for i, layer in enumerate(model.model.layers):
        prefix = f"model.layers.{i}"
        attn = torch.cat([dense[f"{prefix}.self_attn.{p}_proj"] for p in "qkv"])
        torch.testing.assert_close(layer.self_attn.qkv_proj.dequantized_weight(), attn, rtol=0, atol=1e-6)
        mlp = torch.cat([dense[f"{prefix}.mlp.gate_proj"], dense[f"{prefix}.mlp.up_proj"]])
        torch.testing.assert_close(layer.mlp.gate_up_proj.dequantized_weight(), mlp, rtol=0, atol=1e-6)
        torch.testing.assert_close(layer.mlp.down_proj.dequantized_weight(), dense[f"{prefix}.mlp.down_proj"],
                                   rtol=0, atol=1e-6)


@pytest.mark.hint(5)
def test_awq_checkpoint_layers_compute_with_those_weights(awq_checkpoint):
    """A loaded AWQ layer's forward is x @ W.T with W the tests' dense weights; the model's logits are finite."""
    folder, dense = awq_checkpoint
    model = load_qwen3(folder, torch.float32, fused_layers=True)
    assert torch.isfinite(run_documents(model, [[3, 17, 42, 99, 5, 250]])[0]).all()
    layer = model.model.layers[0].self_attn.o_proj
    x = torch.randn(2, layer.in_per_rank, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(layer(x), x @ dense["model.layers.0.self_attn.o_proj"].T, rtol=1e-4, atol=1e-5)


@pytest.mark.hint(7)
@pytest.mark.parametrize("method", ["int8", "int4", "fp8"])
def test_quality_on_other_held_out_text(method, trained_dir, held_out_documents, float_reference):
    """On held-out fortunes the visible tests do not use, every method stays within the README's bounds."""
    reference = float_reference
    model = load_qwen3(trained_dir, torch.float32, fused_layers=True, quantization=method)
    figures = quality(reference, run_documents(model, held_out_documents), held_out_documents)
    bounds = BOUNDS[method]
    assert figures["kl"] <= bounds["kl"] and figures["top1"] >= bounds["top1"], figures
    assert figures["ppl_ratio"] <= bounds["ppl_ratio"], figures


@pytest.mark.hint(7)
def test_engine_on_a_pre_quantized_int4_checkpoint(tiny_model_dir, tmp_path):
    """LLM on a pre-quantized INT4 checkpoint (group 32) generates exactly what load-time quantization would."""
    folder = quantize_checkpoint(tiny_model_dir, tmp_path / "int4", "int4", group_size=32)
    options = {**features_up_to(15), "attention_backend": "torch", "max_num_seqs": 4, "max_model_len": 128,
               "num_kvcache_blocks": 32}
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    llm = LLM(folder, **options)
    assert llm.config.quantization == "int4"
    got = [out["token_ids"] for out in llm.generate([[3, 17, 42], [9, 8, 7, 6]], params, use_tqdm=False)]
    reference = load_qwen3(folder, torch.float32, fused_layers=True)
    ids = [3, 17, 42]
    for _ in range(6):
        ids.append(int(run_documents(reference, [ids])[0][-1].argmax()))
    assert got[0] == ids[3:]


@pytest.mark.skipif(importlib.util.find_spec("awq") is None, reason="autoawq is not installed (it needs a GPU build)")
def test_autoawq_reads_our_int4_tensors():
    """AutoAWQ's own dequantization of our tensors gives our weights (skipped without the autoawq package)."""
    from awq.utils.packing_utils import dequantize_gemm

    from aios.layers import quantization as qz

    gen = torch.Generator().manual_seed(3)
    w = torch.randn(64, 256, generator=gen) * 0.05
    qweight, qzeros, scales = qz.quantize_int4(w, 128)
    theirs = dequantize_gemm(qweight, qzeros, scales, 4, 128)
    torch.testing.assert_close(theirs.float().t(), qz.dequantize_int4(qweight, qzeros, scales, 128), rtol=1e-3, atol=1e-4)
