"""Lesson 18, reference only (not an exercise): FP8 W8A8 through cuBLAS's block-scaled matmul on Hopper.

The lesson's Triton kernel (``quant_kernels.fp8_block_matmul``) multiplies two e4m3 tiles per
128-wide K block and rescales each partial product; at prefill and large-batch sizes, where the
matmul is compute-bound, its tiles lose to cuBLAS's bf16 GEMM. cuBLAS (12.9 and later, compute
capability 9.0) runs the same recipe itself — the "1x128 by 128x128" block scaling of the
DeepSeek-V3 / Qwen3-FP8 checkpoints — and torch exposes it:

* ``torch.nn.functional.scaled_mm(a, b, scale_a, ScalingType.BlockWise1x128, scale_b,
  ScalingType.BlockWise128x128, output_dtype=...)`` (the recipe named), and
* ``torch._scaled_mm(a, b, scale_a, scale_b, out_dtype=...)`` (the recipe read off the scales'
  shapes and strides).

Both compute ``out = (a * scale_a) @ (b * scale_b)`` with ``a`` [M, K] e4m3 row-major and ``b`` [K, N]
e4m3 column-major, i.e. ``b = weight.t()`` for the checkpoint's weight [N, K]. The scales are the
factors that *dequantize* (like ``weight_scale_inv``), in float32, and their layout is the part to get
right::

    scale_a  [M, K/128]            one per token and 128 inputs;  strides (1, M): "outer-dim-major",
                                   i.e. a [K/128, M] buffer seen transposed
    scale_b  [K/128, N/128]        one per 128 x 128 weight block; strides (1, K/128):
                                   exactly ``weight_scale_inv.t()`` ([N/128, K/128] row-major, transposed)

    x [M, K] bf16 ──quantize per [1, 128]──▶ xq [Mp, K] e4m3 + scale_a [Mp, K/128] (strides 1, Mp)
                                                    │
    weight [N, K] e4m3, weight_scale_inv [N/128, K/128] ──.t()──▶ b [K, N], scale_b [K/128, N/128]
                                                    ▼
                          cuBLAS block-scaled GEMM ──▶ out [Mp, N] bf16 ──[:M]──▶ y [M, N]

What this needs (else the Triton kernel runs; ``unavailable_reason`` says why): a CUDA GPU of
compute capability 9.x (the block-scaled kernels are Hopper's; Blackwell uses other formats), a torch
with either call, the format's 128 x 128 blocks with K and N multiples of 128 and K/128 a multiple
of 4 (the weight scales' leading dimension then spans whole 16-byte units, and both torch calls accept
the same tensors), and x in bf16 or fp16. M is padded to a multiple of ``ROW_ALIGN`` (the
activation scales' leading dimension likewise); the padded rows are zeros and are cut off the result.

The activations are quantized exactly as for the Triton kernel (``quant_kernels.quantize_fp8_rows``:
one scale per token and 128 inputs), so both paths multiply the same numbers and differ only in the
order of the float32 sums: switching does not change what the model computes beyond rounding.

``fp8_linear`` is what ``QuantizedLinear`` calls. Up to ``quant_kernels.MIN_DOT_ROWS`` rows (decode at
small batch: the Triton kernel with split-K) it always runs Triton; above, on a GPU and outside CUDA-graph
capture, the first call of each (row class, N, K) times the Triton kernel and the cuBLAS calls with
``quant_gemv``'s tuning (L2 flushed, median of 10) and keeps the fastest that agrees with the Triton
kernel's output; the choice and every timing land in ``quant_gemv.TUNING_LOG`` (key "fp8"; "dot" is the
Triton kernel). A decode graph's batch size is run eagerly before it is captured, so its class is tuned
by then; a prefill class is tuned on at most ``TUNE_MAX_M`` rows of its first input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from aios.layers import quant_gemv, quant_kernels

import triton  # noqa: E402  (quant_kernels set TRITON_INTERPRET without a GPU)

BLOCK = 128
#: Rows of the activation (and its scales) are padded to a multiple of this for cuBLAS.
ROW_ALIGN = 16
#: At most this many rows are timed when a class is tuned (a 16k-token prefill's float32 outputs would take GBs).
TUNE_MAX_M = 2048
#: Row classes tuned separately (upper bounds; above the last: one class): the Triton kernel's tile
#: settings change at 64 rows, decode graphs stay within 256 rows, prefill goes above.
ROW_CLASSES = (64, 256)
#: (kind, row class, N, K, dtype, device) -> quant_gemv.DOT (the Triton kernel) or the chosen ScaledMMConfig.
_CHOICES: dict[tuple, object] = {}


@dataclass(frozen=True)
class ScaledMMConfig:
    """One way to call cuBLAS's block-scaled FP8 matmul through torch.

    api: "scaled_mm" (``torch.nn.functional.scaled_mm`` with the recipes named) or "_scaled_mm"
    (``torch._scaled_mm``, the recipe inferred from the scales); fast_accum: ``use_fast_accum``.
    """

    api: str = "scaled_mm"
    fast_accum: bool = False

    @property
    def label(self) -> str:
        return f"cublas-{self.api}{'-fast' if self.fast_accum else ''}"


#: What the first-call tuning tries besides the Triton kernel (a call torch lacks or refuses is skipped).
CANDIDATES = (ScaledMMConfig("scaled_mm"), ScaledMMConfig("_scaled_mm"), ScaledMMConfig("scaled_mm", fast_accum=True))


# ------------------------------------------------------------------ when cuBLAS can run it


def shape_reason(N: int, K: int, block: int = BLOCK) -> str | None:
    """Why an [N, K] weight in ``block`` x ``block`` blocks cannot take the cuBLAS path (None: it can)."""
    if block != BLOCK:
        return f"cuBLAS block scaling is 128 x 128, the checkpoint's blocks are {block} x {block}"
    if K % BLOCK or N % BLOCK:
        return f"K = {K} and N = {N} must be multiples of {BLOCK} (whole scale blocks)"
    if (K // BLOCK) % 4:
        return f"K / 128 = {K // BLOCK} must be a multiple of 4 (16-byte rows of weight scales)"
    return None


def api_reason() -> str | None:
    """Why this torch has neither block-scaled call (None: it has at least one)."""
    F = torch.nn.functional
    if hasattr(F, "scaled_mm") and hasattr(F, "ScalingType"):
        return None
    if hasattr(torch, "_scaled_mm"):
        return None
    return f"torch {torch.__version__} has neither torch.nn.functional.scaled_mm nor torch._scaled_mm"


def unavailable_reason(x: torch.Tensor, N: int, K: int, block: int = BLOCK) -> str | None:
    """Why ``x`` [M, K] times an FP8 [N, K] weight cannot take the cuBLAS path here (None: it can)."""
    if x.device.type != "cuda" or quant_kernels.INTERPRETED:
        return "cuBLAS block scaling needs a CUDA GPU"
    if os.environ.get("AIOS_FP8_CUBLAS", "1") == "0":
        return "switched off (AIOS_FP8_CUBLAS=0)"
    major, minor = torch.cuda.get_device_capability(x.device)
    if major != 9:
        return f"cuBLAS 1x128 x 128x128 block scaling runs on compute capability 9.x, this GPU is {major}.{minor}"
    if x.dtype not in (torch.bfloat16, torch.float16):
        return f"the output must be bf16 or fp16, x is {x.dtype}"
    return shape_reason(N, K, block) or api_reason()


# ------------------------------------------------------------------ the layouts


def padded_rows(M: int) -> int:
    """M rounded up to a multiple of ROW_ALIGN (at least ROW_ALIGN)."""
    return max(ROW_ALIGN, triton.cdiv(M, ROW_ALIGN) * ROW_ALIGN)


def quantize_fp8_rows_outer_major(x: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (xq [Mp, K] float8_e4m3fn, scale [Mp, K/block] float32 with strides (1, Mp)), Mp = padded_rows(M).

    The numbers of ``quant_kernels.quantize_fp8_rows`` (one scale per token and ``block`` inputs); rows M..Mp
    are zeros with scale 1. The scales live in a [K/block, Mp] buffer seen transposed: cuBLAS's layout.
    """
    M, K = x.shape
    Mp, groups = padded_rows(M), triton.cdiv(K, block)
    if x.device.type != "cuda" or quant_kernels.INTERPRETED:
        xq, scale = quant_kernels.quantize_fp8_rows(x, block)
        padded = torch.zeros(Mp, K, dtype=torch.float8_e4m3fn, device=x.device)
        padded[:M] = xq
        scale_buffer = torch.ones(groups, Mp, dtype=torch.float32, device=x.device)
        scale_buffer[:, :M] = scale.t()
        return padded, scale_buffer.t()
    x = x.contiguous()
    xq = torch.empty(Mp, K, dtype=torch.float8_e4m3fn, device=x.device)
    scale_buffer = torch.empty(groups, Mp, dtype=torch.float32, device=x.device)
    quant_kernels._fp8_quantize_rows_kernel[(Mp, groups)](
        x, xq, scale_buffer, M, K, x.stride(0), xq.stride(0), 1, Mp,
        BLOCK=block, FP8_MAX=torch.finfo(torch.float8_e4m3fn).max)
    return xq, scale_buffer.t()


def weight_scales_for_cublas(weight_scale_inv: torch.Tensor) -> torch.Tensor:
    """weight_scale_inv [N/128, K/128] (the checkpoint's) -> scale_b [K/128, N/128] with strides (1, K/128)."""
    return weight_scale_inv.float().contiguous().t()


def check_cublas_layout(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor) -> None:
    """ValueError unless a [M, K], b [K, N] and their scales have the shapes, strides and dtypes of cuBLAS's
    1x128 by 128x128 recipe (the rules torch checks before it calls cuBLAS; a dimension of size 1 may have any stride)."""
    M, K = a.shape
    N = b.shape[1]
    groups, col_blocks = triton.cdiv(K, BLOCK), triton.cdiv(N, BLOCK)

    def fits(t, dim, size, stride):
        return t.shape[dim] == size and (size <= 1 or t.stride(dim) == stride)

    problems = []
    if a.dtype != torch.float8_e4m3fn or b.dtype != torch.float8_e4m3fn:
        problems.append(f"a and b must be float8_e4m3fn, got {a.dtype} and {b.dtype}")
    if b.shape[0] != K:
        problems.append(f"a is [{M}, {K}] but b is {list(b.shape)}")
    if a.stride(1) != 1 or b.stride(0) != 1:
        problems.append(f"a must be row-major and b column-major, strides {a.stride()} and {b.stride()}")
    if scale_a.dtype != torch.float32 or scale_b.dtype != torch.float32:
        problems.append("scales must be float32")
    if scale_a.dim() != 2 or not (fits(scale_a, 0, M, 1) and fits(scale_a, 1, groups, M)):
        problems.append(f"scale_a must be [{M}, {groups}] with strides (1, {M}), got {list(scale_a.shape)} "
                        f"{scale_a.stride()}")
    if scale_b.dim() != 2 or not (fits(scale_b, 0, groups, 1) and fits(scale_b, 1, col_blocks, groups)):
        problems.append(f"scale_b must be [{groups}, {col_blocks}] with strides (1, {groups}), got "
                        f"{list(scale_b.shape)} {scale_b.stride()}")
    if problems:
        raise ValueError("cuBLAS block-scaled FP8 layout: " + "; ".join(problems))


def emulate_blockwise_scaled_mm(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
                                out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """What cuBLAS computes from these tensors, in float32 on any device (tests): the layout checked, then
    (a * scale_a per [1, 128]) @ (b * scale_b per [128, 128])."""
    check_cublas_layout(a, b, scale_a, scale_b)
    M, K = a.shape
    N = b.shape[1]
    a_full = a.float() * scale_a.repeat_interleave(BLOCK, dim=1)[:, :K]
    b_full = b.float() * scale_b.repeat_interleave(BLOCK, dim=0)[:K].repeat_interleave(BLOCK, dim=1)[:, :N]
    return (a_full @ b_full).to(out_dtype)


# ------------------------------------------------------------------ the call


def scaled_mm_blockwise(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
                        out_dtype: torch.dtype, config: ScaledMMConfig | None = None) -> torch.Tensor:
    """cuBLAS's block-scaled product of tensors in the layout ``check_cublas_layout`` describes: [M, N] in out_dtype."""
    cfg = config or CANDIDATES[0]
    if cfg.api == "scaled_mm":
        F = torch.nn.functional
        return F.scaled_mm(a, b, scale_a, F.ScalingType.BlockWise1x128, scale_b, F.ScalingType.BlockWise128x128,
                           output_dtype=out_dtype, use_fast_accum=cfg.fast_accum)
    return torch._scaled_mm(a, b, scale_a, scale_b, out_dtype=out_dtype, use_fast_accum=cfg.fast_accum)


def fp8_cublas_matmul(x: torch.Tensor, weight: torch.Tensor, weight_scale_inv: torch.Tensor,
                      config: ScaledMMConfig | None = None) -> torch.Tensor:
    """x [M, K] @ (weight [N, K] e4m3 * its 128 x 128 block scales).T -> [M, N] in x's dtype, through cuBLAS.

    The caller checks ``unavailable_reason`` first; x is quantized per token and 128 inputs like the Triton path.
    """
    M = x.shape[0]
    xq, x_scale = quantize_fp8_rows_outer_major(x)
    out = scaled_mm_blockwise(xq, weight.t(), x_scale, weight_scales_for_cublas(weight_scale_inv), x.dtype, config)
    return out[:M]


# ------------------------------------------------------------------ dispatch and first-call tuning


def row_class(M: int) -> str:
    """The tuning class of an M-row input: '17-64', '65-256' or '257+' (with the default ROW_CLASSES)."""
    low = quant_kernels.MIN_DOT_ROWS + 1
    for high in ROW_CLASSES:
        if M <= high:
            return f"{low}-{high}"
        low = high + 1
    return f"{low}+"


def choice_key(x: torch.Tensor, N: int) -> tuple:
    """The tuning key of an input x [M, K] to a matrix of N outputs: ("fp8", row class, N, K, dtype, device)."""
    return ("fp8", row_class(x.shape[0]), N, x.shape[1], x.dtype, str(x.device))


def _choose(x: torch.Tensor, weight: torch.Tensor, weight_scale_inv: torch.Tensor, block: int):
    """The kernel for this call: quant_gemv.DOT (Triton) or a ScaledMMConfig, tuned once per class and shape."""
    M, K = x.shape
    N = weight.shape[0]
    if M <= quant_kernels.MIN_DOT_ROWS:
        return quant_gemv.DOT
    key = choice_key(x, N)
    choice = _CHOICES.get(key)
    if choice is None:
        if unavailable_reason(x, N, K, block) is not None:
            _CHOICES[key] = quant_gemv.DOT
            return quant_gemv.DOT
        if not quant_gemv.autotune_enabled(x):
            return quant_gemv.DOT
        sample = x[:TUNE_MAX_M]

        def run_triton():
            return quant_kernels.fp8_block_matmul(sample, weight, weight_scale_inv, block)

        def run_cublas(cfg):
            return fp8_cublas_matmul(sample, weight, weight_scale_inv, cfg)

        try:
            choice = quant_gemv._tune(key, run_triton, run_cublas, CANDIDATES)
            quant_gemv.TUNING_LOG[-1]["rows"] = sample.shape[0]
        except Exception as exc:  # e.g. no memory left for the flush buffer: keep the Triton kernel
            choice = quant_gemv.DOT
            quant_gemv.log_failed_tuning(key, choice, exc)
        _CHOICES[key] = choice
    return choice


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale_inv: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """FP8 W8A8 x [M, K] @ W.T -> [M, N] in x's dtype: cuBLAS where the first-call tuning chose it, else the
    lesson's Triton kernel (``quant_kernels.fp8_block_matmul``)."""
    choice = _choose(x, weight, weight_scale_inv, block)
    if choice != quant_gemv.DOT:
        try:
            return fp8_cublas_matmul(x, weight, weight_scale_inv, choice)
        except (RuntimeError, ValueError):
            if x.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise
            # A row count the tuned call refuses: this class goes back to the Triton kernel.
            _CHOICES[choice_key(x, weight.shape[0])] = quant_gemv.DOT
    return quant_kernels.fp8_block_matmul(x, weight, weight_scale_inv, block)


def fp8_choices() -> dict[str, str]:
    """'rows N K' -> the kernel chosen for each tuned FP8 shape ('dot': Triton; 'cublas-...': cuBLAS), for reports."""
    return quant_gemv.tuned_choices("fp8")
