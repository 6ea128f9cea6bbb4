"""Lesson 18, reference only (not an exercise): weight-only GEMV kernels for decode-sized inputs.

A decode step multiplies a handful of token rows (M = 1 at batch 1) by every weight matrix.
Its cost is reading the weight: with INT4 codes an H200 has to turn about 36 weights per clock
per multiprocessor into products to keep up with its memory. The lesson's ``tl.dot`` kernels
(``quant_kernels.int8_matmul`` / ``int4_matmul``) pad M to 16 rows and convert every code
with an integer-to-float instruction (16 per clock per multiprocessor on Hopper), so at M = 1
they stream a fraction of the bandwidth. The kernels here are built for that case:

* no ``tl.dot``: each program loads a wide tile of packed codes, dequantizes it with integer
  bit operations, multiplies by the broadcast input row and reduces with ``tl.sum``;
* the "magic number" conversion (``MAGIC``): OR-ing a code c (< 2**23) into the mantissa of the
  float 2**23 (bits ``0x4B000000``) *is* the float 2**23 + c, no conversion instruction needed;
  subtracting 2**23 + z (the zero point, or INT8's +128 offset) leaves c - z exactly::

      INT4 word (8 codes)  ──AND 0xF << 4j, OR 0x4B000000──▶  2**23 + q * 16**j   (bitcast to float32)
                                             ── minus (2**23 + z * 16**j) ──▶  (q - z) * 16**j

  the factor 16**j (the nibble's place, j = 0..3; the upper four nibbles after one shift by 16)
  is a power of two, taken out once per output with the group's scale;
* the group's scale and zero point are applied once per group and output, not per weight;
* split-K: program (m, n, s) covers output columns n and the K slice s, so that even N = 4096
  makes enough programs for 132 multiprocessors; the slices' float32 partial sums are added by
  a second small kernel in a fixed order (deterministic, no atomics).

Tensors (as in ``quantization.py``):

* INT4 (AWQ): x [M, K], qweight [K, N / 8] int32, qzeros [K / group, N / 8] int32,
  scales [K / group, N]; nibble j of a word holds column ``AWQ_ORDER[j]`` of its run of eight.
* INT8: x [M, K], qweight [N, K] int8, scale [N]; the magic path reads the codes four to an
  int32 (``qweight.view(torch.int32)``, K % 4 == 0).

``int4_linear`` / ``int8_linear`` are what ``QuantizedLinear`` calls: the GEMV for M <= GEMV_MAX_M,
the lesson's kernels above. On a GPU (outside CUDA-graph capture) the first call of each shape
times the candidate settings (and the ``tl.dot`` kernel) and keeps the fastest that agrees with
the ``tl.dot`` kernel's output (``AIOS_GEMV_AUTOTUNE=0`` turns that off and uses the defaults).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

from aios.layers import quant_kernels

import triton  # noqa: E402  (quant_kernels set TRITON_INTERPRET without a GPU)
import triton.language as tl  # noqa: E402

INTERPRETED = quant_kernels.INTERPRETED
#: Largest M the dispatchers send to the GEMV kernels (above: the lesson's tl.dot kernels).
GEMV_MAX_M = 8
#: 2**23 as float32 bits: OR a code < 2**23 into its mantissa and the float is 2**23 + code.
MAGIC_BITS = tl.constexpr(0x4B000000)
MAGIC_FLOAT = tl.constexpr(8388608.0)


@dataclass(frozen=True)
class GemvConfig:
    """Launch settings of a GEMV kernel.

    block_n: output columns per program; block_k: K rows (codes) per loop step (INT4: divides the group);
    splits: programs along K (None: ``plan_splits``); programs_per_sm: the split plan's target;
    magic: the bit-trick conversion (else integer-to-float conversion instructions);
    wide_loads: let Triton load four packed INT4 words per thread and instruction;
    fused_sum: the last program of each column tile adds the split-K partial sums (``_sum_when_last``)
    instead of a second kernel.
    """

    block_n: int = 256
    block_k: int = 128
    splits: int | None = None
    num_warps: int = 4
    num_stages: int = 3
    magic: bool = True
    programs_per_sm: int = 2
    wide_loads: bool = True
    fused_sum: bool = False

    @property
    def label(self) -> str:
        return (f"n{self.block_n}k{self.block_k}w{self.num_warps}st{self.num_stages}"
                f"s{self.splits or 'auto'}p{self.programs_per_sm}{'m' if self.magic else 'c'}{'' if self.wide_loads else 'v1'}"
                f"{'f' if self.fused_sum else ''}")


#: Defaults and candidates, chosen by compiling for sm_90 offline (scripts/gpu/quant_sweep.py times them):
#: INT4 16-row steps of 1024 columns on 4 warps leave each thread 1024 weights per group in about 5 instructions
#: each (mask-or, subtract, fused multiply-add, plus addressing), with no shared-memory round trip in the loop;
#: INT8 tiles of 128 rows x 128 codes, about 5.2 instructions per code.
INT4_DEFAULT = GemvConfig(block_n=1024, block_k=16, num_warps=4)
INT8_DEFAULT = GemvConfig(block_n=128, block_k=128, num_warps=4)
#: What the first-call tuning tries besides the tl.dot kernel (each setting is compiled once per process).
INT4_CANDIDATES = (
    INT4_DEFAULT,
    GemvConfig(block_n=512, block_k=16, num_warps=2),
    GemvConfig(block_n=2048, block_k=16, num_warps=8),
    GemvConfig(block_n=256, block_k=16, num_warps=4),
    GemvConfig(block_n=1024, block_k=16, num_warps=4, fused_sum=True),
    GemvConfig(block_n=256, block_k=16, num_warps=4, fused_sum=True),
)
INT8_CANDIDATES = (
    INT8_DEFAULT,
    GemvConfig(block_n=64, block_k=256, num_warps=4),
    GemvConfig(block_n=128, block_k=256, num_warps=8),
    GemvConfig(block_n=256, block_k=64, num_warps=4),
    GemvConfig(block_n=128, block_k=128, num_warps=4, fused_sum=True),
    GemvConfig(block_n=64, block_k=256, num_warps=4, fused_sum=True),
)
#: Settings scripts/gpu/quant_sweep.py times on top of the candidates (what the choices above rest on:
#: conversion instructions instead of the magic number, one word per load, more programs).
INT4_SWEEP_EXTRA = (
    GemvConfig(block_n=512, block_k=16, num_warps=2, magic=False),
    GemvConfig(block_n=256, block_k=32, num_warps=4, wide_loads=False),
    GemvConfig(block_n=1024, block_k=16, num_warps=4, programs_per_sm=4),
    GemvConfig(block_n=512, block_k=16, num_warps=2, fused_sum=True),
)
INT8_SWEEP_EXTRA = (
    GemvConfig(block_n=64, block_k=256, num_warps=4, magic=False),
    GemvConfig(block_n=64, block_k=128, num_warps=2),
    GemvConfig(block_n=128, block_k=128, num_warps=4, programs_per_sm=4),
)


@functools.lru_cache(maxsize=None)
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def plan_splits(tiles: int, steps: int, cfg: GemvConfig, device: torch.device, min_steps: int = 1) -> int:
    """Programs along K for ``tiles`` output tiles (all rows of x) and ``steps`` K steps of ``cfg.block_k``.

    ``cfg.splits`` forces the number (tests); otherwise enough splits for ``cfg.programs_per_sm``
    programs per multiprocessor, each with at least ``min_steps`` steps (so it streams enough
    bytes to hide the memory latency). 1 off a GPU.
    """
    if cfg.splits is not None:
        return max(1, min(cfg.splits, steps))
    if device.type != "cuda" or INTERPRETED:
        return 1
    wanted = triton.cdiv(cfg.programs_per_sm * _multiprocessors(device.index or 0), tiles)
    return max(1, min(wanted, steps // max(1, min_steps)))


# ------------------------------------------------------------------ the kernels


@triton.jit
def _awq_centred(words, zero_words, NIBBLE: tl.constexpr, MAGIC: tl.constexpr):
    """q - z of nibble NIBBLE % 4 of ``words`` [BLOCK_K, BLOCK_W] (zero_words [1, BLOCK_W]), float32.

    With MAGIC the values are (q - z) * 16**(NIBBLE % 4): the code is masked in place, not shifted down.
    """
    shift = 4 * (NIBBLE % 4)
    if MAGIC:
        mask = 0xF << shift
        codes = ((words & mask) | MAGIC_BITS).to(tl.float32, bitcast=True)  # 2**23 + q * 16**j
        zeros = ((zero_words & mask) | MAGIC_BITS).to(tl.float32, bitcast=True)  # 2**23 + z * 16**j
        return codes - zeros
    return (((words >> shift) & 0xF) - ((zero_words >> shift) & 0xF)).to(tl.float32)


@triton.jit
def _awq_group_scale(scales_ptr, row_offset, words, word_ok, NIBBLE: tl.constexpr, MAGIC: tl.constexpr):
    """The scale of nibble NIBBLE's column in each run of eight [1, BLOCK_W], divided by 16**(NIBBLE % 4) with MAGIC."""
    column = (NIBBLE % 4) * 2 + NIBBLE // 4  # AWQ_ORDER[NIBBLE]
    scale = tl.load(scales_ptr + row_offset + words * 8 + column, mask=word_ok, other=0.0).to(tl.float32)
    if MAGIC:
        scale = scale * (1.0 / (1 << (4 * (NIBBLE % 4))))
    return scale


@triton.jit
def _awq_store(out_ptr, row_offset, words, word_ok, acc, NIBBLE: tl.constexpr):
    column = (NIBBLE % 4) * 2 + NIBBLE // 4  # AWQ_ORDER[NIBBLE]
    tl.store(out_ptr + row_offset + words * 8 + column, acc.to(out_ptr.dtype.element_ty), mask=word_ok)


@triton.jit
def _int4_gemv_kernel(
    x_ptr, qweight_ptr, qzeros_ptr, scales_ptr, out_ptr,
    final_ptr, counter_ptr, splits,
    N, packed_n, K, k_per_split,
    stride_xm, stride_om, stride_os,
    BLOCK_W: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr, MAGIC: tl.constexpr,
    WIDE_LOADS: tl.constexpr, FUSED_SUM: tl.constexpr,
):
    """Program (m, n, s): out[s, m, 8 w + c] = sum over K slice s of x[m, k] * W.T[k, 8 w + c], w in tile n.

    BLOCK_W packed words (8 BLOCK_W columns) per program. The K slice is whole groups of GROUP
    rows, each read in GROUP / BLOCK_K steps of BLOCK_K rows: within a group every thread adds
    x * (q - z) into its own [BLOCK_K, BLOCK_W] accumulators (one fused multiply-add per weight),
    and only at the group's end are they summed over K and multiplied by the group's scale.
    Every per-column tensor is [1, BLOCK_W], in the layout of the tile's rows (1-D vectors would
    get a layout of their own and a trip through shared memory per use).
    WIDE_LOADS: packed_n (= N / 8) comes in as an argument, so Triton sees when it is a multiple
    of 16 and loads four consecutive words per thread; else it is computed here (one word per load).
    """
    m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_s = tl.program_id(2)
    if not WIDE_LOADS:
        packed_n = N // 8
    words = (pid_n * BLOCK_W + tl.arange(0, BLOCK_W))[None, :]  # [1, BLOCK_W]
    word_ok = words < packed_n
    acc0 = tl.zeros((1, BLOCK_W), dtype=tl.float32)
    acc1 = tl.zeros((1, BLOCK_W), dtype=tl.float32)
    acc2 = tl.zeros((1, BLOCK_W), dtype=tl.float32)
    acc3 = tl.zeros((1, BLOCK_W), dtype=tl.float32)
    acc4 = tl.zeros((1, BLOCK_W), dtype=tl.float32)
    acc5 = tl.zeros((1, BLOCK_W), dtype=tl.float32)
    acc6 = tl.zeros((1, BLOCK_W), dtype=tl.float32)
    acc7 = tl.zeros((1, BLOCK_W), dtype=tl.float32)
    for g0 in range(pid_s * k_per_split, tl.minimum((pid_s + 1) * k_per_split, K), GROUP):
        group = g0 // GROUP
        zero_low = tl.load(qzeros_ptr + group * packed_n + words, mask=word_ok, other=0)
        zero_high = zero_low >> 16
        part0 = tl.zeros((BLOCK_K, BLOCK_W), dtype=tl.float32)
        part1 = tl.zeros((BLOCK_K, BLOCK_W), dtype=tl.float32)
        part2 = tl.zeros((BLOCK_K, BLOCK_W), dtype=tl.float32)
        part3 = tl.zeros((BLOCK_K, BLOCK_W), dtype=tl.float32)
        part4 = tl.zeros((BLOCK_K, BLOCK_W), dtype=tl.float32)
        part5 = tl.zeros((BLOCK_K, BLOCK_W), dtype=tl.float32)
        part6 = tl.zeros((BLOCK_K, BLOCK_W), dtype=tl.float32)
        part7 = tl.zeros((BLOCK_K, BLOCK_W), dtype=tl.float32)
        for step in tl.static_range(GROUP // BLOCK_K):
            ks = (g0 + step * BLOCK_K + tl.arange(0, BLOCK_K))[:, None]  # whole groups: no K mask
            x = tl.load(x_ptr + m * stride_xm + ks).to(tl.float32)  # [BLOCK_K, 1]
            low = tl.load(qweight_ptr + ks * packed_n + words, mask=word_ok, other=0)
            high = low >> 16  # nibbles 4..7 moved to the places of 0..3 (the sign bits dragged in are masked off)
            part0 += x * _awq_centred(low, zero_low, 0, MAGIC)
            part1 += x * _awq_centred(low, zero_low, 1, MAGIC)
            part2 += x * _awq_centred(low, zero_low, 2, MAGIC)
            part3 += x * _awq_centred(low, zero_low, 3, MAGIC)
            part4 += x * _awq_centred(high, zero_high, 4, MAGIC)
            part5 += x * _awq_centred(high, zero_high, 5, MAGIC)
            part6 += x * _awq_centred(high, zero_high, 6, MAGIC)
            part7 += x * _awq_centred(high, zero_high, 7, MAGIC)
        row = group * N
        acc0 += tl.sum(part0, axis=0, keep_dims=True) * _awq_group_scale(scales_ptr, row, words, word_ok, 0, MAGIC)
        acc1 += tl.sum(part1, axis=0, keep_dims=True) * _awq_group_scale(scales_ptr, row, words, word_ok, 1, MAGIC)
        acc2 += tl.sum(part2, axis=0, keep_dims=True) * _awq_group_scale(scales_ptr, row, words, word_ok, 2, MAGIC)
        acc3 += tl.sum(part3, axis=0, keep_dims=True) * _awq_group_scale(scales_ptr, row, words, word_ok, 3, MAGIC)
        acc4 += tl.sum(part4, axis=0, keep_dims=True) * _awq_group_scale(scales_ptr, row, words, word_ok, 4, MAGIC)
        acc5 += tl.sum(part5, axis=0, keep_dims=True) * _awq_group_scale(scales_ptr, row, words, word_ok, 5, MAGIC)
        acc6 += tl.sum(part6, axis=0, keep_dims=True) * _awq_group_scale(scales_ptr, row, words, word_ok, 6, MAGIC)
        acc7 += tl.sum(part7, axis=0, keep_dims=True) * _awq_group_scale(scales_ptr, row, words, word_ok, 7, MAGIC)
    base = pid_s * stride_os + m * stride_om
    _awq_store(out_ptr, base, words, word_ok, acc0, 0)
    _awq_store(out_ptr, base, words, word_ok, acc1, 1)
    _awq_store(out_ptr, base, words, word_ok, acc2, 2)
    _awq_store(out_ptr, base, words, word_ok, acc3, 3)
    _awq_store(out_ptr, base, words, word_ok, acc4, 4)
    _awq_store(out_ptr, base, words, word_ok, acc5, 5)
    _awq_store(out_ptr, base, words, word_ok, acc6, 6)
    _awq_store(out_ptr, base, words, word_ok, acc7, 7)
    if FUSED_SUM:
        _sum_when_last(out_ptr, final_ptr, counter_ptr, m, pid_n, splits, N, stride_om, stride_os, BLOCK_W * 8)


@triton.jit
def _int8_gemv_kernel(
    x_ptr, w_ptr, scale_ptr, out_ptr,
    final_ptr, counter_ptr, splits,
    N, K, k_per_split,
    stride_xm, stride_wn, stride_om, stride_os,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FUSED_SUM: tl.constexpr,
):
    """Program (m, n, s): out[s, m, cols] = scale[cols] * sum over K slice s of x[m, k] * q[cols, k] (int8 tile, converted)."""
    m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_s = tl.program_id(2)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(pid_s * k_per_split, tl.minimum((pid_s + 1) * k_per_split, K), BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        x = tl.load(x_ptr + m * stride_xm + ks, mask=k_ok, other=0.0).to(tl.float32)
        q = tl.load(w_ptr + cols[:, None] * stride_wn + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0)
        acc += tl.sum(q.to(tl.float32) * x[None, :], axis=1)
    scale = tl.load(scale_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + pid_s * stride_os + m * stride_om + cols, (acc * scale).to(out_ptr.dtype.element_ty), mask=col_ok)
    if FUSED_SUM:
        _sum_when_last(out_ptr, final_ptr, counter_ptr, m, pid_n, splits, N, stride_om, stride_os, BLOCK_N)


@triton.jit
def _int8_byte_values(words, BYTE: tl.constexpr):
    """Codes q (times 256 for odd bytes) of byte BYTE of ``words`` [BLOCK_N, BLOCK_W], float32, by the magic number.

    ``words`` are already XOR 0x80808080 (each byte q + 128 in 0..255) and, for bytes 2 and 3, shifted down by 16.
    """
    place = 8 * (BYTE % 2)
    mask = 0xFF << place
    codes = ((words & mask) | MAGIC_BITS).to(tl.float32, bitcast=True)  # 2**23 + (q + 128) * 256**(BYTE % 2)
    offset = MAGIC_FLOAT + 128.0 * (1 << place)
    return codes - offset


@triton.jit
def _int8_byte_inputs(x_ptr, x_row, word_ks, word_ok, BYTE: tl.constexpr):
    """x[4 w + BYTE] for the words w [1, BLOCK_W], float32, divided by 256 for odd bytes (undoing the byte's place)."""
    x = tl.load(x_ptr + x_row + word_ks * 4 + BYTE, mask=word_ok, other=0.0).to(tl.float32)
    if BYTE % 2:
        x = x * (1.0 / 256.0)  # a power of two: exact
    return x


@triton.jit
def _int8_gemv_words_kernel(
    x_ptr, w_ptr, scale_ptr, out_ptr,
    final_ptr, counter_ptr, splits,
    N, K_words, words_per_split,
    stride_xm, stride_wn, stride_om, stride_os,
    BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, FUSED_SUM: tl.constexpr,
):
    """Like ``_int8_gemv_kernel``, reading the codes four to an int32 word (w_ptr: qweight viewed as
    int32 [N, K / 4]) and converting them with bit operations: XOR 0x80 makes each byte q + 128 in 0..255.
    Each thread adds its products into its own [BLOCK_N, BLOCK_W] accumulators (fused multiply-adds);
    they are summed over K once, after the loop."""
    m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_s = tl.program_id(2)
    cols = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N))[:, None]  # [BLOCK_N, 1]
    col_ok = cols < N
    x_row = m * stride_xm
    acc = tl.zeros((BLOCK_N, BLOCK_W), dtype=tl.float32)
    start = pid_s * words_per_split
    for w0 in range(start, tl.minimum(start + words_per_split, K_words), BLOCK_W):
        word_ks = (w0 + tl.arange(0, BLOCK_W))[None, :]  # [1, BLOCK_W]
        word_ok = word_ks < K_words
        words = tl.load(w_ptr + cols * stride_wn + word_ks, mask=col_ok & word_ok, other=0)
        low = words ^ -2139062144  # 0x80808080 as an int32: each byte q -> q + 128 (unsigned)
        high = low >> 16
        acc += _int8_byte_inputs(x_ptr, x_row, word_ks, word_ok, 0) * _int8_byte_values(low, 0)
        acc += _int8_byte_inputs(x_ptr, x_row, word_ks, word_ok, 1) * _int8_byte_values(low, 1)
        acc += _int8_byte_inputs(x_ptr, x_row, word_ks, word_ok, 2) * _int8_byte_values(high, 2)
        acc += _int8_byte_inputs(x_ptr, x_row, word_ks, word_ok, 3) * _int8_byte_values(high, 3)
    scale = tl.load(scale_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    total = tl.sum(acc, axis=1, keep_dims=True) * scale  # [BLOCK_N, 1]
    tl.store(out_ptr + pid_s * stride_os + m * stride_om + cols, total.to(out_ptr.dtype.element_ty), mask=col_ok)
    if FUSED_SUM:
        _sum_when_last(out_ptr, final_ptr, counter_ptr, m, pid_n, splits, N, stride_om, stride_os, BLOCK_N)


@triton.jit
def _sum_when_last(part_ptr, final_ptr, counter_ptr, m, pid_n, splits, N, stride_pm, stride_ps, BLOCK_N: tl.constexpr):
    """Split-K without a second kernel: the last of the ``splits`` programs of column tile (m, pid_n) to finish
    adds all their float32 partial sums (part [splits, M, N]) in split order and writes final [M, N].

    Each program counts itself in ``counter_ptr[m * tiles + pid_n]`` after a barrier (every thread's partial
    stored) with an acquire-release atomic; the one that sees ``splits - 1`` reads the partials from L2
    (``.cg``: not from a stale L1 line) and puts the counter back to 0 for the next call.
    """
    tl.debug_barrier()
    counter = counter_ptr + m * tl.num_programs(1) + pid_n
    ticket = tl.atomic_add(counter, 1, sem="acq_rel")
    if ticket == splits - 1:
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        ok = cols < N
        total = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for s in range(0, splits):
            total += tl.load(part_ptr + s * stride_ps + m * stride_pm + cols, mask=ok, other=0.0, cache_modifier=".cg")
        tl.store(final_ptr + m * N + cols, total.to(final_ptr.dtype.element_ty), mask=ok)
        tl.atomic_xchg(counter, 0)


@triton.jit
def _sum_splits_kernel(part_ptr, out_ptr, splits, numel, BLOCK: tl.constexpr):
    """out[i] = sum_s part[s, i] (part [splits, numel] float32), in a fixed order, converted to out's dtype."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(0, splits):
        total += tl.load(part_ptr + s * numel + offs, mask=ok, other=0.0)
    tl.store(out_ptr + offs, total.to(out_ptr.dtype.element_ty), mask=ok)


def _finish(part: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[splits, M, N] float32 partial sums -> [M, N] in ``dtype`` (one small kernel)."""
    splits, M, N = part.shape
    out = torch.empty(M, N, dtype=dtype, device=part.device)
    block = 1024
    _sum_splits_kernel[(triton.cdiv(M * N, block),)](part, out, splits, M * N, BLOCK=block)
    return out


def _output(splits: int, M: int, N: int, x: torch.Tensor) -> torch.Tensor:
    """Where the kernel writes: the result itself (one split) or float32 partial sums [splits, M, N]."""
    if splits == 1:
        return torch.empty(1, M, N, dtype=x.dtype, device=x.device)
    return torch.empty(splits, M, N, dtype=torch.float32, device=x.device)


#: Split-K tile counters of ``_sum_when_last``, per device (zero between calls: the last program resets its own).
MAX_COUNTERS = 4096
_COUNTERS: dict[str, torch.Tensor] = {}


def _fused_sum_target(cfg: GemvConfig, splits: int, M: int, tiles: int, N: int, x: torch.Tensor):
    """(final output, counters) when the kernel adds its own split-K partial sums, else None.

    The counters are allocated once per device, never while a CUDA graph is being captured (the graph's
    memory pool would own them): such a call falls back to the second kernel.
    """
    if not cfg.fused_sum or splits == 1 or M * tiles > MAX_COUNTERS:
        return None
    key = str(x.device)
    if key not in _COUNTERS:
        if x.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None
        _COUNTERS[key] = torch.zeros(MAX_COUNTERS, dtype=torch.int32, device=x.device)
    return torch.empty(M, N, dtype=x.dtype, device=x.device), _COUNTERS[key]


# ------------------------------------------------------------------ the GEMV wrappers


def int4_gemv(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
              group_size: int, config: GemvConfig | None = None) -> torch.Tensor:
    """x [M, K] @ W.T -> [M, N] in x's dtype, W in AWQ tensors (qweight [K, N/8], qzeros [K/g, N/8], scales [K/g, N]).

    One program per (row of x, 8 * BLOCK_W output columns, K slice). Meant for small M (the
    weight tile is read once per row; rows after the first mostly hit the L2 cache).
    """
    cfg = config or INT4_DEFAULT
    M, K = x.shape
    N = scales.shape[1]
    if K % group_size or group_size < 16 or group_size & (group_size - 1):
        raise ValueError(f"int4_gemv needs a power-of-two group size >= 16 that divides K={K}, got {group_size}")
    if cfg.block_n % 8 or cfg.block_n < 16:
        raise ValueError(f"int4_gemv: block_n must be a multiple of 8 (>= 16), got {cfg.block_n}")
    block_k = min(cfg.block_k, group_size)
    block_w = cfg.block_n // 8
    x = x if x.stride(-1) == 1 else x.contiguous()
    tiles = triton.cdiv(N // 8, block_w)
    groups = K // group_size
    min_groups = triton.cdiv(16384, group_size * cfg.block_n // 2)  # >= 16 KB of codes per program
    splits = plan_splits(M * tiles, groups, cfg, x.device, min_groups)
    k_per_split = triton.cdiv(groups, splits) * group_size  # whole groups
    splits = triton.cdiv(K, k_per_split)
    out = _output(splits, M, N, x)
    fused = _fused_sum_target(cfg, splits, M, tiles, N, x)
    final, counters = fused or (out, out)
    if M:
        _int4_gemv_kernel[(M, tiles, splits)](
            x, qweight.contiguous(), qzeros.contiguous(), scales.contiguous(), out, final, counters, splits,
            N, N // 8, K, k_per_split, x.stride(0), out.stride(1), out.stride(0),
            BLOCK_W=block_w, BLOCK_K=block_k, GROUP=group_size, MAGIC=cfg.magic, WIDE_LOADS=cfg.wide_loads,
            FUSED_SUM=fused is not None, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    if fused is not None:
        return final
    return out[0] if splits == 1 else _finish(out, x.dtype)


def int8_gemv(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
              config: GemvConfig | None = None) -> torch.Tensor:
    """x [M, K] @ (qweight [N, K] int8 * scale [N, 1]).T -> [M, N] in x's dtype, for small M.

    With ``config.magic`` and K % 4 == 0 the codes are read as int32 words (four codes each).
    """
    cfg = config or INT8_DEFAULT
    M, K = x.shape
    N = qweight.shape[0]
    x = x if x.stride(-1) == 1 else x.contiguous()
    qweight = qweight.contiguous()
    tiles = triton.cdiv(N, cfg.block_n)
    words = cfg.magic and K % 4 == 0 and cfg.block_k % 4 == 0 and qweight.storage_offset() % 4 == 0
    block_k = cfg.block_k
    steps = triton.cdiv(K, block_k)
    min_steps = triton.cdiv(16384, block_k * cfg.block_n)
    splits = plan_splits(M * tiles, steps, cfg, x.device, min_steps)
    k_per_split = triton.cdiv(steps, splits) * block_k
    splits = triton.cdiv(K, k_per_split)
    out = _output(splits, M, N, x)
    fused = _fused_sum_target(cfg, splits, M, tiles, N, x)
    final, counters = fused or (out, out)
    if M and words:
        packed = qweight.view(torch.int32)  # [N, K / 4]: byte j of word w is code 4 w + j (little-endian)
        _int8_gemv_words_kernel[(M, tiles, splits)](
            x, packed, scale, out, final, counters, splits, N, K // 4, k_per_split // 4,
            x.stride(0), packed.stride(0), out.stride(1), out.stride(0),
            BLOCK_N=cfg.block_n, BLOCK_W=block_k // 4, FUSED_SUM=fused is not None,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    elif M:
        _int8_gemv_kernel[(M, tiles, splits)](
            x, qweight, scale, out, final, counters, splits, N, K, k_per_split,
            x.stride(0), qweight.stride(0), out.stride(1), out.stride(0),
            BLOCK_N=cfg.block_n, BLOCK_K=block_k, FUSED_SUM=fused is not None,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    if fused is not None:
        return final
    return out[0] if splits == 1 else _finish(out, x.dtype)


# ------------------------------------------------------------------ dispatch and first-call tuning

#: Without tuning (tests, CPU, AIOS_GEMV_AUTOTUNE=0) the GEMV runs up to this many rows, the tl.dot kernel above.
UNTUNED_GEMV_MAX_M = 4
#: A tuned candidate must agree with the tl.dot kernel's output to this fraction of its largest value.
TUNE_TOLERANCE = 3e-2
#: (kind, M, N, K, dtype, device) -> the chosen GemvConfig, or DOT for the lesson's tl.dot kernel.
DOT = "dot"
_CHOICES: dict[tuple, GemvConfig | str] = {}
#: Bytes overwritten before each timed call, more than the L2 cache (50 MB on an H100 or H200).
FLUSH_BYTES = 128 * 1024 * 1024
#: One record per tuned shape: the key, every candidate's microseconds (None: refused or wrong) and the choice.
TUNING_LOG: list[dict] = []
#: GPU clock cycles ``_time_us`` waits before the timed calls (~1.5 ms: more than the host takes to queue them).
HOST_LEAD_CYCLES = 3_000_000


def autotune_enabled(x: torch.Tensor) -> bool:
    """Tune on the first call of a shape: on a GPU, compiled kernels, not while a CUDA graph is being captured."""
    return (x.device.type == "cuda" and not INTERPRETED and os.environ.get("AIOS_GEMV_AUTOTUNE", "1") != "0"
            and not torch.cuda.is_current_stream_capturing())


def _time_us(fn, flush: torch.Tensor, reps: int = 10) -> float:
    """Median microseconds of ``fn()``, each call after overwriting ``flush`` (so the weight is read from memory,
    as in a decode step, not from the L2 cache). The GPU first spins for ``HOST_LEAD_CYCLES`` so that the host has
    queued every call before the first one runs: the time of a few-microsecond kernel then holds no launch gap."""
    fn()
    events = []
    if hasattr(torch.cuda, "_sleep"):
        torch.cuda._sleep(HOST_LEAD_CYCLES)
    for _ in range(reps):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    times = sorted(start.elapsed_time(end) for start, end in events)
    return times[len(times) // 2] * 1e3


def _tune(key: tuple, run_dot, run_gemv, candidates, tolerance: float = TUNE_TOLERANCE,
          baseline: str = DOT) -> GemvConfig | str:
    """Time the tl.dot kernel (``run_dot``: or whichever kernel the caller compares against, named ``baseline`` in
    TUNING_LOG) and each GEMV candidate; keep the fastest whose output agrees with the baseline's to ``tolerance``
    of its largest value. Returns DOT when the baseline stays."""
    reference = run_dot().float()
    peak = reference.abs().max().clamp_min(1e-6)
    flush = torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device=reference.device)
    timings: dict[str, float | None] = {baseline: _time_us(run_dot, flush)}
    best, best_us = DOT, timings[baseline]
    for cfg in candidates:
        try:
            error = ((run_gemv(cfg).float() - reference).abs().max() / peak).item()
            us = _time_us(lambda: run_gemv(cfg), flush) if error <= tolerance else None
        except Exception:  # a setting the compiler or the GPU refuses: not a candidate
            us = None
        timings[cfg.label] = us
        if us is not None and us < best_us:
            best, best_us = cfg, us
    del flush
    TUNING_LOG.append({"key": [str(part) for part in key], "us": timings,
                       "choice": baseline if best == DOT else best.label})
    return best


def choice_key(kind: str, x: torch.Tensor, N: int) -> tuple:
    """The tuning key of an input x [M, K] to a matrix of N outputs: (kind, M, N, K, dtype, device)."""
    M, K = x.shape
    return (kind, M, N, K, x.dtype, str(x.device))


def _choose(kind: str, x: torch.Tensor, N: int, run_dot, run_gemv, candidates, default: GemvConfig | str,
            **tuning):
    """The kernel for this call: tuned once per shape on a GPU, else ``default`` (DOT: the baseline) up to
    UNTUNED_GEMV_MAX_M rows. ``tuning``: ``_tune``'s tolerance and baseline name."""
    M = x.shape[0]
    if M > GEMV_MAX_M or M == 0:
        return DOT
    key = choice_key(kind, x, N)
    choice = _CHOICES.get(key)
    if choice is None:
        if not autotune_enabled(x):
            return default if M <= UNTUNED_GEMV_MAX_M else DOT
        try:
            choice = _tune(key, run_dot, run_gemv, candidates, **tuning)
        except Exception as exc:  # e.g. no memory left for the flush buffer: keep the untuned choice
            choice = default if M <= UNTUNED_GEMV_MAX_M else DOT
            log_failed_tuning(key, tuning.get("baseline", DOT) if choice == DOT else choice.label, exc)
        _CHOICES[key] = choice
    return choice


def log_failed_tuning(key: tuple, label: str, exc: Exception) -> None:
    """Record in TUNING_LOG that tuning ``key`` failed with ``exc`` and ``label`` is used untuned."""
    TUNING_LOG.append({"key": [str(part) for part in key], "us": {}, "choice": label,
                       "error": f"{type(exc).__name__}: {exc}"[:200]})


def tuned_choices(kind: str) -> dict[str, str]:
    """'M N K' -> the choice logged for each tuned shape whose kind starts with ``kind`` (for reports)."""
    return {" ".join(entry["key"][1:4]): entry["choice"] for entry in TUNING_LOG if entry["key"][0].startswith(kind)}


def int4_linear(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                group_size: int) -> torch.Tensor:
    """x [M, K] @ W.T (AWQ tensors) -> [M, N]: the GEMV for decode-sized M, the lesson's ``int4_matmul`` above."""
    def run_dot():
        return quant_kernels.int4_matmul(x, qweight, qzeros, scales, group_size)

    def run_gemv(cfg):
        return int4_gemv(x, qweight, qzeros, scales, group_size, cfg)

    choice = _choose("int4", x, scales.shape[1], run_dot, run_gemv, INT4_CANDIDATES, INT4_DEFAULT)
    return run_dot() if choice == DOT else run_gemv(choice)


def int8_linear(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ (qweight * scale).T -> [M, N]: the GEMV for decode-sized M, the lesson's ``int8_matmul`` above."""
    def run_dot():
        return quant_kernels.int8_matmul(x, qweight, scale)

    def run_gemv(cfg):
        return int8_gemv(x, qweight, scale, cfg)

    choice = _choose("int8", x, qweight.shape[0], run_dot, run_gemv, INT8_CANDIDATES, INT8_DEFAULT)
    return run_dot() if choice == DOT else run_gemv(choice)
