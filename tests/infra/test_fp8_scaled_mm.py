"""Lesson 18's FP8 W8A8 through cuBLAS (reference code, not an exercise: solutions/aios/layers/fp8_scaled_mm.py).

On the CPU: the layouts cuBLAS's 1x128 by 128x128 block scaling reads (activation scales outer-dim-major,
weight scales the checkpoint's table transposed), checked against an emulation of what cuBLAS computes
from them and against torch's own checks (fake CUDA tensors); the activation quantization is the Triton
path's, so both paths multiply the same numbers; the dispatcher falls back to Triton where cuBLAS cannot
run. On a GPU (Hopper): cuBLAS's product equals the dequantized reference at Qwen3-8B shapes with block
scales that differ block by block (a transposed scale table would show), the first-call tuning records
its choice, and a CUDA graph replays the chosen path.
"""

import pytest
import torch

from aios.layers import fp8_scaled_mm as fs
from aios.layers import quant_gemv, quant_kernels
from aios.layers import quantization as qz

HAS_CUDA = torch.cuda.is_available()


def uneven_weight_and_input(N, K, M, seed, device="cpu"):
    """A weight whose 128 x 128 blocks and an input whose [1, 128] slices have scales far apart (0.05 .. 20),
    so that a scale applied to the wrong block or token changes the product by a lot."""
    gen = torch.Generator().manual_seed(seed)
    block_gain = torch.exp(torch.rand(-(-N // 128), -(-K // 128), generator=gen) * 6 - 3)
    w = torch.randn(N, K, generator=gen) * 0.02 * qz.expand_blocks(block_gain, 128, N, K)
    slice_gain = torch.exp(torch.rand(M, -(-K // 128), generator=gen) * 6 - 3)
    x = torch.randn(M, K, generator=gen) * slice_gain.repeat_interleave(128, dim=1)[:, :K]
    return w.to(device), x.to(device)


def w8a8_reference(x, weight, scale_inv):
    """float32 (per-token, per-128 quantized x) @ dequantized(W).T: what both FP8 paths compute."""
    xq, x_scale = quant_kernels.quantize_fp8_rows(x.float())
    x_seen = xq.float() * x_scale.repeat_interleave(128, dim=1)[:, :x.shape[1]]
    return x_seen @ qz.dequantize_fp8_block(weight, scale_inv).T


# ------------------------------------------------------------------ CPU: layouts and fallbacks


@pytest.mark.parametrize("M", [1, 16, 20, 33])
def test_activation_quantization_in_cublas_layout(M):
    """quantize_fp8_rows_outer_major: the numbers of quantize_fp8_rows, rows padded to 16 (zeros, scale 1),
    the scales [Mp, K/128] with strides (1, Mp) (a [K/128, Mp] buffer seen transposed)."""
    _, x = uneven_weight_and_input(128, 512, M, seed=M)
    xq, scale = fs.quantize_fp8_rows_outer_major(x)
    Mp = fs.padded_rows(M)
    assert Mp % fs.ROW_ALIGN == 0 and Mp >= M and xq.shape == (Mp, 512) and xq.dtype == torch.float8_e4m3fn
    assert scale.shape == (Mp, 4) and scale.stride() == (1, Mp) and scale.dtype == torch.float32
    expected_q, expected_scale = quant_kernels.quantize_fp8_rows(x)
    assert torch.equal(xq[:M].view(torch.uint8), expected_q.view(torch.uint8))
    assert torch.equal(scale[:M], expected_scale)
    assert xq[M:].float().abs().sum() == 0 and torch.all(scale[M:] == 1)


def test_weight_scales_are_the_checkpoint_table_transposed():
    """scale_b for cuBLAS is weight_scale_inv.t(): [K/128, N/128] with strides (1, K/128), no copy of a contiguous table."""
    w, _ = uneven_weight_and_input(384, 1024, 1, seed=1)
    _, scale_inv = qz.quantize_fp8_block(w)
    scale_b = fs.weight_scales_for_cublas(scale_inv)
    assert scale_b.shape == (8, 3) and scale_b.stride() == (1, 8)
    assert scale_b.data_ptr() == scale_inv.data_ptr() and torch.equal(scale_b.t(), scale_inv)


@pytest.mark.parametrize("M,N,K", [(20, 256, 512), (1, 384, 1024), (40, 128, 1536)])
def test_emulated_cublas_product_is_the_w8a8_product(M, N, K):
    """What cuBLAS computes from our tensors (emulated: a * scale_a per [1, 128], b * scale_b per [128, 128])
    equals the W8A8 reference, padded rows cut off, with block scales 0.05..20 apart."""
    w, x = uneven_weight_and_input(N, K, M, seed=M + N)
    weight, scale_inv = qz.quantize_fp8_block(w)
    xq, x_scale = fs.quantize_fp8_rows_outer_major(x)
    out = fs.emulate_blockwise_scaled_mm(xq, weight.t(), x_scale, fs.weight_scales_for_cublas(scale_inv))
    assert out.shape == (fs.padded_rows(M), N)
    torch.testing.assert_close(out[:M], w8a8_reference(x, weight, scale_inv), rtol=1e-5, atol=1e-5)
    assert out[M:].abs().sum() == 0


def test_layout_check_refuses_the_wrong_layouts():
    """check_cublas_layout: row-major activation scales, the untransposed weight table, a row-major b are errors."""
    w, x = uneven_weight_and_input(256, 512, 20, seed=3)
    weight, scale_inv = qz.quantize_fp8_block(w)
    xq, x_scale = fs.quantize_fp8_rows_outer_major(x)
    scale_b = fs.weight_scales_for_cublas(scale_inv)
    fs.check_cublas_layout(xq, weight.t(), x_scale, scale_b)
    with pytest.raises(ValueError, match="scale_a"):
        fs.check_cublas_layout(xq, weight.t(), x_scale.contiguous(), scale_b)
    with pytest.raises(ValueError, match="scale_b"):
        fs.check_cublas_layout(xq, weight.t(), x_scale, scale_inv)
    with pytest.raises(ValueError, match="scale_b"):
        fs.check_cublas_layout(xq, weight.t(), x_scale, scale_b.contiguous())
    with pytest.raises(ValueError, match="column-major"):
        fs.check_cublas_layout(xq, weight.t().contiguous(), x_scale, scale_b)


def _fake_cuda_like(t):
    """A fake CUDA tensor with t's shape, strides and dtype (call inside FakeTensorMode)."""
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cuda")


@pytest.mark.parametrize("api", ["scaled_mm", "_scaled_mm"])
def test_torch_accepts_our_layout(api):
    """torch's own shape/stride checks of the block-scaled call (its meta functions, on fake CUDA tensors, so
    no GPU is needed) accept our tensors and give [Mp, N] bf16; scaled_mm refuses row-major activation scales."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    if api == "scaled_mm" and not hasattr(torch.nn.functional, "ScalingType"):
        pytest.skip(f"torch {torch.__version__} has no torch.nn.functional.scaled_mm")
    w, x = uneven_weight_and_input(6144 // 16, 4096, 40, seed=4)
    weight, scale_inv = qz.quantize_fp8_block(w)
    xq, x_scale = fs.quantize_fp8_rows_outer_major(x)
    real = (xq, weight.t(), x_scale, fs.weight_scales_for_cublas(scale_inv))
    row_major_scale = x_scale.contiguous()
    try:
        with FakeTensorMode():
            _fake_cuda_like(xq)
    except Exception as exc:  # noqa: BLE001 - a torch that cannot fake CUDA devices here
        pytest.skip(f"fake CUDA tensors unavailable: {exc}")
    with FakeTensorMode():
        a, b, sa, sb = (_fake_cuda_like(t) for t in real)
        out = fs.scaled_mm_blockwise(a, b, sa, sb, torch.bfloat16, fs.ScaledMMConfig(api))
        assert tuple(out.shape) == (fs.padded_rows(40), 384) and out.dtype == torch.bfloat16
        if api == "scaled_mm":
            with pytest.raises(Exception):
                fs.scaled_mm_blockwise(a, b, _fake_cuda_like(row_major_scale), sb, torch.bfloat16)


def test_shape_and_device_reasons():
    """The cuBLAS path is refused, with a reason, off a GPU and for shapes whose scales it cannot lay out."""
    x = torch.zeros(32, 512, dtype=torch.bfloat16)
    assert "CUDA" in fs.unavailable_reason(x, 256, 512)
    assert fs.shape_reason(256, 512) is None and fs.shape_reason(6144, 4096) is None and fs.shape_reason(4096, 12288) is None
    assert "multiples of 128" in fs.shape_reason(200, 512)
    assert "multiple of 4" in fs.shape_reason(256, 384)
    assert "128 x 128" in fs.shape_reason(256, 512, block=64)


def test_row_classes():
    """Tuning classes: up to 16 rows never leave Triton; 17-64, 65-256 and 257+ are tuned separately."""
    assert [fs.row_class(m) for m in (17, 64, 65, 256, 257, 16384)] == ["17-64", "17-64", "65-256", "65-256",
                                                                       "257+", "257+"]


@pytest.mark.skipif(HAS_CUDA, reason="the CPU fallback")
def test_fp8_linear_falls_back_to_triton_on_the_cpu():
    """fp8_linear off a GPU is the Triton kernel (interpreted): same result as fp8_block_matmul, nothing tuned."""
    w, x = uneven_weight_and_input(256, 512, 20, seed=5)
    weight, scale_inv = qz.quantize_fp8_block(w)
    before = len(quant_gemv.TUNING_LOG)
    out = fs.fp8_linear(x, weight, scale_inv)
    torch.testing.assert_close(out, quant_kernels.fp8_block_matmul(x, weight, scale_inv))
    assert len(quant_gemv.TUNING_LOG) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU wiring check (emulated cuBLAS, CPU tensors); "
                    "on a GPU the dispatch tests above run the real kernels")
def test_dispatch_tunes_once_per_row_class_and_falls_back(monkeypatch):
    """fp8_linear's wiring, on the CPU with cuBLAS emulated: the first call of a row class is tuned (on at most
    TUNE_MAX_M rows, logged with key "fp8"), later calls of the class reuse the choice, a new class tunes again;
    a call the chosen cuBLAS path refuses runs the Triton kernel and sends the class back to it for good."""
    def emulated_cublas(x, weight, scale_inv, config=None):
        xq, x_scale = fs.quantize_fp8_rows_outer_major(x)
        out = fs.emulate_blockwise_scaled_mm(xq, weight.t(), x_scale, fs.weight_scales_for_cublas(scale_inv), x.dtype)
        return out[:x.shape[0]]

    tuned = []

    def fake_tune(key, run_dot, run_gemv, candidates):
        reference, chosen = run_dot(), run_gemv(candidates[0])
        torch.testing.assert_close(chosen, reference, rtol=1e-3, atol=1e-3)
        tuned.append((key, reference.shape[0]))
        quant_gemv.TUNING_LOG.append({"key": [str(part) for part in key], "us": {}, "choice": candidates[0].label})
        return candidates[0]

    monkeypatch.setattr(fs, "_CHOICES", {})
    monkeypatch.setattr(fs, "TUNE_MAX_M", 24)
    monkeypatch.setattr(fs, "unavailable_reason", lambda *args: None)
    monkeypatch.setattr(fs, "fp8_cublas_matmul", emulated_cublas)
    monkeypatch.setattr(quant_gemv, "autotune_enabled", lambda x: True)
    monkeypatch.setattr(quant_gemv, "_tune", fake_tune)
    monkeypatch.setattr(quant_gemv, "TUNING_LOG", [])
    w, x = uneven_weight_and_input(256, 512, 70, seed=7)
    weight, scale_inv = qz.quantize_fp8_block(w)
    expected = w8a8_reference(x, weight, scale_inv)

    torch.testing.assert_close(fs.fp8_linear(x[:40], weight, scale_inv), expected[:40], rtol=1e-4, atol=1e-4)
    assert tuned == [(("fp8", "17-64", 256, 512, torch.float32, "cpu"), 24)]
    assert quant_gemv.TUNING_LOG[-1]["rows"] == 24
    fs.fp8_linear(x[:20], weight, scale_inv)
    assert len(tuned) == 1
    fs.fp8_linear(x, weight, scale_inv)
    assert [key[1] for key, _ in tuned] == ["17-64", "65-256"]
    assert fs.fp8_choices() == {"17-64 256 512": "cublas-scaled_mm", "65-256 256 512": "cublas-scaled_mm"}
    assert fs.fp8_linear(x[:8], weight, scale_inv).shape == (8, 256) and len(tuned) == 2  # <= 16 rows: Triton

    def refusing(*args, **kwargs):
        raise RuntimeError("CUBLAS_STATUS_NOT_SUPPORTED")

    monkeypatch.setattr(fs, "fp8_cublas_matmul", refusing)
    torch.testing.assert_close(fs.fp8_linear(x[:30], weight, scale_inv), quant_kernels.fp8_block_matmul(
        x[:30], weight, scale_inv))
    assert fs._CHOICES[("fp8", "17-64", 256, 512, torch.float32, "cpu")] == quant_gemv.DOT


# ------------------------------------------------------------------ GPU (Hopper): cuBLAS itself

# (N, K) of Qwen3-8B's qkv_proj, o_proj, gate_up_proj and down_proj.
QWEN3_8B_SHAPES = [(6144, 4096), (4096, 4096), (24576, 4096), (4096, 12288)]


def require_hopper():
    if not HAS_CUDA:
        pytest.skip("needs a CUDA GPU")
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("cuBLAS 1x128 x 128x128 block scaling runs on compute capability 9.x")


@pytest.mark.gpu
def test_cublas_path_available_on_hopper():
    """On an H100/H200 with this torch the cuBLAS path is not refused (a silent fallback would hide a regression)."""
    require_hopper()
    x = torch.zeros(64, 4096, dtype=torch.bfloat16, device="cuda")
    assert fs.unavailable_reason(x, 6144, 4096) is None


@pytest.mark.gpu
@pytest.mark.parametrize("M", [17, 256, 1000])
@pytest.mark.parametrize("N,K", QWEN3_8B_SHAPES)
def test_cublas_equals_dequantized_reference_at_qwen3_8b_shapes(M, N, K):
    """Every cuBLAS call torch offers here gives the float32 W8A8 product within bf16 rounding (block scales
    0.05..20 apart, so a misread scale layout fails), and agrees with the Triton kernel; at least one runs."""
    require_hopper()
    w, x = uneven_weight_and_input(N, K, M, seed=M + N + K, device="cuda")
    weight, scale_inv = qz.quantize_fp8_block(w)
    x = x.to(torch.bfloat16)
    expected = w8a8_reference(x, weight, scale_inv)
    peak = expected.abs().max()
    triton_out = quant_kernels.fp8_block_matmul(x, weight, scale_inv).float()
    worked = {}
    for cfg in fs.CANDIDATES:
        try:
            out = fs.fp8_cublas_matmul(x, weight, scale_inv, cfg)
        except (RuntimeError, ValueError, AttributeError, TypeError) as exc:
            worked[cfg.label] = f"refused: {type(exc).__name__}: {str(exc)[:160]}"
            continue
        assert out.shape == (M, N) and out.dtype == torch.bfloat16
        error = ((out.float() - expected).abs().max() / peak).item()
        versus_triton = ((out.float() - triton_out).abs().max() / peak).item()
        worked[cfg.label] = round(error, 5)
        assert error < 1e-2 and versus_triton < 1e-2, (cfg.label, error, versus_triton)
    print(f"M={M} N={N} K={K}: {worked}")
    assert any(isinstance(v, float) for v in worked.values()), worked


@pytest.mark.gpu
def test_fp8_linear_tunes_once_per_class_and_replays_in_a_graph():
    """fp8_linear on a GPU: the first call of a class is tuned (Triton 'dot' and the cuBLAS candidates timed,
    the choice logged), later calls of the class reuse it; a CUDA graph of the chosen path replays new inputs."""
    require_hopper()
    N, K = 6144, 4096
    w, x = uneven_weight_and_input(N, K, 200, seed=6, device="cuda")
    weight, scale_inv = qz.quantize_fp8_block(w)
    x = x.to(torch.bfloat16)
    fs._CHOICES.clear()
    before = len(quant_gemv.TUNING_LOG)
    out = fs.fp8_linear(x, weight, scale_inv)
    entries = quant_gemv.TUNING_LOG[before:]
    assert len(entries) == 1 and entries[0]["key"][:4] == ["fp8", "65-256", str(N), str(K)], entries
    assert quant_gemv.DOT in entries[0]["us"] and len(entries[0]["us"]) == 1 + len(fs.CANDIDATES)
    print("tuning:", entries[0])
    expected = w8a8_reference(x, weight, scale_inv)
    assert ((out.float() - expected).abs().max() / expected.abs().max()).item() < 1e-2
    fs.fp8_linear(x[:100], weight, scale_inv)  # same class: no new tuning
    assert len(quant_gemv.TUNING_LOG) == before + 1

    static_x = x[:128].clone()
    fs.fp8_linear(static_x, weight, scale_inv)  # the eager run before capture (as the engine does)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fs.fp8_linear(static_x, weight, scale_inv)
    static_x.copy_(x[64:192])
    graph.replay()
    expected = w8a8_reference(x[64:192], weight, scale_inv)
    assert ((static_out.float() - expected).abs().max() / expected.abs().max()).item() < 1e-2
