"""Reference only (not an exercise): a bf16/fp16 GEMV for the decode-sized inputs of the dense linears.

At batch 1 a decode step multiplies one token row by every weight matrix: M = 1, so the cost is
reading the weight, and the best a kernel can do is stream it at the memory's bandwidth. cuBLAS
(``F.linear``) on Qwen3-0.6B's matrices (4-12 MB each) streams them at about 1.3 TB/s on an H200,
under half of what a copy reaches (issue 15; docs/benchmarks.md, "Where the time goes").
The kernel here is built for that case, on ``quant_gemv``'s machinery (launch settings
``GemvConfig``, the split-K plan, the deterministic split-K sums, the first-call tuning):

* no ``tl.dot``: a program loads a [BLOCK_N, BLOCK_K] tile of W (contiguous along K: each thread
  reads 8 bf16 = 16 bytes per load), multiplies it by the broadcast input rows in float32 and
  sums over K: into per-thread partial sums reduced once after the loop (``DEFERRED``, when the rows
  times the thread's weights per step fit ``DEFERRED_REGISTERS``) or per step (shuffles: costly);
* every row of x (M <= 8) is handled by the same program, so each weight tile is read once;
* split-K: program (n, s) covers output rows n of W and the K slice s, so that the 1024-output
  matrices (Qwen3-0.6B's o_proj and down_proj) still give every multiprocessor a few programs; the
  slices' float32 partial sums are added in a fixed order by the tile's last program
  (``fused_sum``) or a second kernel: the result does not depend on timing;
* the bias (if any) is added once, in the first slice's partial sum.

Tensors: x [M, K], weight [N, K] (``nn.Linear``'s layout, row-major), bias [N] or None, in bf16 or
fp16; out [M, N] in x's dtype, accumulated in float32 and rounded once.

``dense_linear`` is what ``linear.dense_linear`` calls for a CUDA input of at most 8 rows. On the first
call of each (M, N, K, dtype) outside CUDA-graph capture it times ``F.linear`` and the candidate settings
with the L2 cache flushed (``quant_gemv._tune``) and keeps the fastest that agrees with ``F.linear``'s
output within bf16 rounding; so it is never slower than ``F.linear`` on what it measured. Without
tuning (during capture of a shape it has not seen, ``AIOS_GEMV_AUTOTUNE=0``) it calls ``F.linear``.
``AIOS_DENSE_GEMV=0`` turns the GEMV off altogether (benchmarks compare both). The engine runs each
decode graph's batch size eagerly before it captures it (``capture_decode_graphs``), so the decode
shapes are tuned by then and the graphs record the chosen kernels. Eager calls keep ``F.linear``
(``gemv_runs_here``; ``AIOS_DENSE_GEMV=eager`` runs the tuned GEMV there too): eager decode at small
batch waits on the host's launches, and a Triton launch from Python costs the host more than cuBLAS's.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from aios.layers import quant_gemv
from aios.layers.quant_gemv import GemvConfig, _sum_when_last

import triton  # noqa: E402  (quant_kernels set TRITON_INTERPRET without a GPU)
import triton.language as tl  # noqa: E402

#: Environment switch: "0" keeps F.linear everywhere (the GEMV off).
SWITCH = "AIOS_DENSE_GEMV"
#: Weights smaller than this (elements) keep F.linear: launch-bound either way, and not worth compiling for.
MIN_WEIGHTS = 1 << 20
#: A tuned setting must agree with F.linear to this fraction of the output's largest value: two bf16 roundings
#: differ by at most one unit in the last place (2**-7 = 0.8% of the largest value), and cuBLAS may add its
#: split-K partial sums in bf16 (torch's default allow_bf16_reduced_precision_reduction); a wrong kernel is far off.
TUNE_TOLERANCE = 2e-2
#: Each program streams at least this many weights (so it has enough bytes in flight).
MIN_PROGRAM_WEIGHTS = 4096
#: Per-thread float32 partial sums a program may keep across the K loop (DEFERRED) before it sums per step.
DEFERRED_REGISTERS = 128
BASELINE = "F.linear"

#: The default setting (tests, sweeps) and what the first-call tuning tries against F.linear. BLOCK_K is
#: 256 * num_warps: the warps split K (each thread 8 consecutive weights of a row), so that a row of x lands
#: in the weight tile's layout without a trip through shared memory; tiles of 2-8 rows of W, each program one
#: or two K steps, so that every program of a decode-sized matrix is resident at once and all of the weight
#: is requested at the start (the 0.6B matrices are 4-12 MB: a few microseconds at the bandwidth).
DENSE_DEFAULT = GemvConfig(block_n=4, block_k=1024, num_warps=4, programs_per_sm=4, fused_sum=True)
DENSE_CANDIDATES = (
    DENSE_DEFAULT,
    GemvConfig(block_n=8, block_k=1024, num_warps=4, programs_per_sm=4, fused_sum=True),
    GemvConfig(block_n=2, block_k=1024, num_warps=4, programs_per_sm=8, fused_sum=True),
    GemvConfig(block_n=4, block_k=512, num_warps=2, programs_per_sm=8, fused_sum=True),
    GemvConfig(block_n=8, block_k=512, num_warps=2, programs_per_sm=4, fused_sum=True),
    GemvConfig(block_n=2, block_k=1024, num_warps=4, splits=1),
)
#: Settings scripts/gpu/quant_sweep.py --dense times on top: a second kernel for the sums, fewer programs,
#: a tile whose x row needs a shared-memory trip, a taller tile.
DENSE_SWEEP_EXTRA = (
    GemvConfig(block_n=4, block_k=1024, num_warps=4, programs_per_sm=4),
    GemvConfig(block_n=4, block_k=1024, num_warps=4, programs_per_sm=1, fused_sum=True),
    GemvConfig(block_n=8, block_k=512, num_warps=4, programs_per_sm=4, fused_sum=True),
    GemvConfig(block_n=16, block_k=1024, num_warps=4, programs_per_sm=2, fused_sum=True),
)


@triton.jit
def _dense_row_term(x_ptr, row, M, stride_xm, ks, k_ok, w, EVEN: tl.constexpr, DEFERRED: tl.constexpr):
    """Row ``row`` of x times the float32 weight tile w [BLOCK_N, BLOCK_K]: the products (DEFERRED) or their
    sums over this K step [BLOCK_N, 1]. Rows past M read row M - 1 (their results are not stored)."""
    x_row = x_ptr + tl.minimum(row, M - 1) * stride_xm + ks  # [1, BLOCK_K]: in the tile's layout
    if EVEN:
        x = tl.load(x_row).to(tl.float32)
    else:
        x = tl.load(x_row, mask=k_ok, other=0.0).to(tl.float32)
    if DEFERRED:
        term = w * x
    else:
        term = tl.sum(w * x, axis=1, keep_dims=True)
    return term


@triton.jit
def _dense_store_row(out_ptr, acc, bias, row, M, pid_s, stride_om, stride_os, cols, col_ok, DEFERRED: tl.constexpr):
    """Row ``row``'s float32 sums of this K slice (plus the bias in slice 0) into out [splits, M, N]."""
    if DEFERRED:
        total = tl.sum(acc, axis=1, keep_dims=True)  # [BLOCK_N, 1]
    else:
        total = acc
    total += bias
    tl.store(out_ptr + pid_s * stride_os + row * stride_om + cols, total.to(out_ptr.dtype.element_ty),
             mask=col_ok & (cols * 0 + row < M))  # (a tensor: the interpreter will not broadcast a scalar mask)


@triton.jit
def _dense_gemv_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr,
    final_ptr, counter_ptr, splits,
    M, N, K, k_per_split,
    stride_xm, stride_wn, stride_om, stride_os,
    ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DEFERRED: tl.constexpr, ACC_K: tl.constexpr,
    EVEN: tl.constexpr, HAS_BIAS: tl.constexpr, FUSED_SUM: tl.constexpr,
):
    """Program (0, n, s): out[s, m, cols] = sum over K slice s of x[m, k] * W[cols, k] for every row m < M.

    ROWS: M rounded up to a power of two (<= 8), one accumulator per row; ACC_K: BLOCK_K when the
    products are summed over K after the loop (DEFERRED), else 1 (summed per step). EVEN: N % BLOCK_N == 0 and
    K % BLOCK_K == 0 (no masks: the loads vectorise to 16 bytes).
    """
    pid_n = tl.program_id(1)
    pid_s = tl.program_id(2)
    cols = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N))[:, None]  # [BLOCK_N, 1]
    col_ok = cols < N
    lanes = tl.arange(0, BLOCK_K)[None, :]  # [1, BLOCK_K]
    acc0 = tl.zeros((BLOCK_N, ACC_K), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_N, ACC_K), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_N, ACC_K), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_N, ACC_K), dtype=tl.float32)
    acc4 = tl.zeros((BLOCK_N, ACC_K), dtype=tl.float32)
    acc5 = tl.zeros((BLOCK_N, ACC_K), dtype=tl.float32)
    acc6 = tl.zeros((BLOCK_N, ACC_K), dtype=tl.float32)
    acc7 = tl.zeros((BLOCK_N, ACC_K), dtype=tl.float32)
    start = pid_s * k_per_split
    for k0 in range(start, tl.minimum(start + k_per_split, K), BLOCK_K):
        ks = k0 + lanes
        k_ok = ks < K
        if EVEN:
            w = tl.load(w_ptr + cols * stride_wn + ks).to(tl.float32)
        else:
            w = tl.load(w_ptr + cols * stride_wn + ks, mask=col_ok & k_ok, other=0.0).to(tl.float32)
        acc0 += _dense_row_term(x_ptr, 0, M, stride_xm, ks, k_ok, w, EVEN, DEFERRED)
        if ROWS > 1:
            acc1 += _dense_row_term(x_ptr, 1, M, stride_xm, ks, k_ok, w, EVEN, DEFERRED)
        if ROWS > 2:
            acc2 += _dense_row_term(x_ptr, 2, M, stride_xm, ks, k_ok, w, EVEN, DEFERRED)
            acc3 += _dense_row_term(x_ptr, 3, M, stride_xm, ks, k_ok, w, EVEN, DEFERRED)
        if ROWS > 4:
            acc4 += _dense_row_term(x_ptr, 4, M, stride_xm, ks, k_ok, w, EVEN, DEFERRED)
            acc5 += _dense_row_term(x_ptr, 5, M, stride_xm, ks, k_ok, w, EVEN, DEFERRED)
            acc6 += _dense_row_term(x_ptr, 6, M, stride_xm, ks, k_ok, w, EVEN, DEFERRED)
            acc7 += _dense_row_term(x_ptr, 7, M, stride_xm, ks, k_ok, w, EVEN, DEFERRED)
    bias = tl.zeros((BLOCK_N, 1), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols, mask=col_ok & (cols * 0 + pid_s == 0), other=0.0).to(tl.float32)
    _dense_store_row(out_ptr, acc0, bias, 0, M, pid_s, stride_om, stride_os, cols, col_ok, DEFERRED)
    if ROWS > 1:
        _dense_store_row(out_ptr, acc1, bias, 1, M, pid_s, stride_om, stride_os, cols, col_ok, DEFERRED)
    if ROWS > 2:
        _dense_store_row(out_ptr, acc2, bias, 2, M, pid_s, stride_om, stride_os, cols, col_ok, DEFERRED)
        _dense_store_row(out_ptr, acc3, bias, 3, M, pid_s, stride_om, stride_os, cols, col_ok, DEFERRED)
    if ROWS > 4:
        _dense_store_row(out_ptr, acc4, bias, 4, M, pid_s, stride_om, stride_os, cols, col_ok, DEFERRED)
        _dense_store_row(out_ptr, acc5, bias, 5, M, pid_s, stride_om, stride_os, cols, col_ok, DEFERRED)
        _dense_store_row(out_ptr, acc6, bias, 6, M, pid_s, stride_om, stride_os, cols, col_ok, DEFERRED)
        _dense_store_row(out_ptr, acc7, bias, 7, M, pid_s, stride_om, stride_os, cols, col_ok, DEFERRED)
    if FUSED_SUM:
        for row in tl.static_range(ROWS):
            if row < M:
                _sum_when_last(out_ptr, final_ptr, counter_ptr, row, pid_n, splits, N, stride_om, stride_os, BLOCK_N)


def rows_class(M: int) -> int:
    """The kernel's ROWS for an M-row input: M rounded up to a power of two (1, 2, 4 or 8)."""
    return 1 << max(0, M - 1).bit_length()


def dense_gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               config: GemvConfig | None = None) -> torch.Tensor:
    """x [M, K] @ weight[N, K].T (+ bias [N]) -> [M, N] in x's dtype, float32 accumulation, for 1 <= M <= 8."""
    cfg = config or DENSE_DEFAULT
    M, K = x.shape
    N = weight.shape[0]
    if not 0 < M <= quant_gemv.GEMV_MAX_M:
        raise ValueError(f"dense_gemv takes 1 to {quant_gemv.GEMV_MAX_M} rows, got {M}")
    if weight.shape[1] != K:
        raise ValueError(f"dense_gemv: x has {K} features, the weight {weight.shape[1]}")
    if cfg.block_n & (cfg.block_n - 1) or cfg.block_k & (cfg.block_k - 1):
        raise ValueError(f"dense_gemv: block_n and block_k must be powers of two, got {cfg.block_n}, {cfg.block_k}")
    x = x if x.stride(-1) == 1 else x.contiguous()
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    rows = rows_class(M)
    tiles = triton.cdiv(N, cfg.block_n)
    steps = triton.cdiv(K, cfg.block_k)
    min_steps = triton.cdiv(MIN_PROGRAM_WEIGHTS, cfg.block_n * cfg.block_k)
    splits = quant_gemv.plan_splits(tiles, steps, cfg, x.device, min_steps)
    k_per_split = triton.cdiv(steps, splits) * cfg.block_k
    splits = triton.cdiv(K, k_per_split)
    out = quant_gemv._output(splits, M, N, x)
    fused = quant_gemv._fused_sum_target(cfg, splits, M, tiles, N, x)
    final, counters = fused or (out, out)
    deferred = rows * cfg.block_n * cfg.block_k <= DEFERRED_REGISTERS * 32 * cfg.num_warps
    _dense_gemv_kernel[(1, tiles, splits)](
        x, weight, weight if bias is None else bias, out, final, counters, splits,
        M, N, K, k_per_split, x.stride(0), weight.stride(0), out.stride(1), out.stride(0),
        ROWS=rows, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, DEFERRED=deferred,
        ACC_K=cfg.block_k if deferred else 1,
        EVEN=N % cfg.block_n == 0 and K % cfg.block_k == 0, HAS_BIAS=bias is not None,
        FUSED_SUM=fused is not None, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if fused is not None:
        return final
    return out[0] if splits == 1 else quant_gemv._finish(out, x.dtype)


# ------------------------------------------------------------------ dispatch and first-call tuning


def enabled() -> bool:
    """False when the environment says ``AIOS_DENSE_GEMV=0`` (read on every call: a benchmark may switch it)."""
    return os.environ.get(SWITCH, "1") != "0"


def gemv_runs_here(x: torch.Tensor) -> bool:
    """Whether a tuned GEMV setting runs for this call: while a CUDA graph is being captured (the decode graphs),
    or on every call with ``AIOS_DENSE_GEMV=eager``. An eager call keeps F.linear by default: eager decode at
    batch 1 is bound by the host's launches, and launching the GEMV from Python costs the host more than
    cuBLAS does; a graph replay launches nothing."""
    if os.environ.get(SWITCH) == "eager":
        return True
    return x.device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def gemv_applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether ``dense_linear`` may consider the GEMV: switched on, 1-8 rows of a half-precision x whose dtype
    the weight (and bias) share, a 2-D weight big enough to matter (``MIN_WEIGHTS``) and small enough for
    32-bit offsets, no autograd."""
    return (enabled() and x.dim() == 2 and 0 < x.shape[0] <= quant_gemv.GEMV_MAX_M
            and x.dtype in (torch.bfloat16, torch.float16) and weight.dtype == x.dtype and weight.dim() == 2
            and MIN_WEIGHTS <= weight.numel() < 2**31 and x.shape[1] == weight.shape[1]
            and (bias is None or bias.dtype == x.dtype) and not (torch.is_grad_enabled() and x.requires_grad))


#: Shapes (M, N, K, dtype, device, bias?) tuned by an eager call: later eager calls go straight to F.linear.
_EAGER_DONE: set[tuple] = set()


def dense_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` [M, N], or the GEMV where the first-call tuning of this shape chose it and
    ``gemv_runs_here`` (in a CUDA graph). The first eager call of a shape tunes it; the later ones cost the host
    only a set lookup more than F.linear."""
    if x.dim() != 2:
        return F.linear(x, weight, bias)
    runs = gemv_runs_here(x)
    eager_key = (x.shape[0], weight.shape[0], x.shape[1], x.dtype, x.get_device(), bias is None)
    if (not runs and eager_key in _EAGER_DONE) or not gemv_applies(x, weight, bias):
        return F.linear(x, weight, bias)

    def run_baseline():
        return F.linear(x, weight, bias)

    def run_gemv(cfg):
        return dense_gemv(x, weight, bias, cfg)

    kind = "dense" if bias is None else "dense+bias"
    choice = quant_gemv._choose(kind, x, weight.shape[0], run_baseline, run_gemv, DENSE_CANDIDATES, quant_gemv.DOT,
                                tolerance=TUNE_TOLERANCE, baseline=BASELINE)
    if not runs:
        if quant_gemv.choice_key(kind, x, weight.shape[0]) in quant_gemv._CHOICES:  # tuned (not only untuned)
            _EAGER_DONE.add(eager_key)
        return run_baseline()
    return run_baseline() if choice == quant_gemv.DOT else run_gemv(choice)


def dense_choices() -> dict[str, str]:
    """'M N K' -> the kernel chosen for each tuned dense shape ('F.linear' or a GEMV setting's label), for reports."""
    return quant_gemv.tuned_choices("dense")
