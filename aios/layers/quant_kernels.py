"""Lesson 18: Triton matmuls that dequantize the weight tile by tile, inside the product.

``y = x @ W.T`` with W stored quantized. Dequantizing the whole of W first would write
(and read back) a bf16 copy of it: exactly the bytes quantization was meant to save.
Instead each program loads a [BLOCK_K, BLOCK_N] tile of the *quantized* weight, turns it
into x's dtype in registers, and feeds it to ``tl.dot``; memory only ever sees the
1-byte (INT8) or half-byte (INT4) codes and their small scale tables.

* ``int8_matmul(x, qweight, scale)``: qweight [N, K] int8, scale [N]. The scale is per
  output column, so it factors out of the sum: accumulate ``x @ q.T`` and multiply by
  the scale once at the end.
* ``int4_matmul(x, qweight, qzeros, scales, group_size)``: AWQ tensors, qweight [K, N / 8]
  int32. A tile loads each int32 once, repeats it eight times along N (``repeat8``), and
  column n takes its nibble ``AWQ_REVERSE_ORDER[n % 8]`` (a gather that read int32 ``n // 8``
  for every column n made 8 loads of each word: 30x slower than bf16 on an H200); scale and zero point change every ``group_size`` rows of K,
  so BLOCK_K divides the group size and each K tile needs one row of them.

Grid: (ceil(M / BLOCK_M), ceil(N / BLOCK_N), splits). ``tl.dot`` needs at least 16 rows, so a
decode step (M = 1) still runs BLOCK_M = 16 with the extra rows masked off; the cost of a
decode matmul is reading the weight, which is the same either way. With M = 1 there are
only N / BLOCK_N output tiles, too few to keep every multiprocessor streaming, so the K loop
is split (split-K, ``plan_split_k``): program (m, n, s) covers K slice s and writes a float32
partial sum, and the wrapper adds the slices.

Without a GPU the kernels run in Triton's interpreter (numpy), where the dot is done in
float32 (``DOT_IN_FP32``); the engine on the CPU uses the plain-torch path of
``QuantizedLinear`` instead (``backend="torch"``), since the interpreter is slow.
"""

import functools
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
MIN_DOT_ROWS = 16
#: Most programs along K per output tile (split-K, decode shapes; see plan_split_k).
MAX_SPLIT_K = 8
#: Tiles for decode-sized inputs (M <= 16) and for prefill-sized ones.
DECODE_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 256, "num_warps": 4, "num_stages": 3}
PREFILL_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 3}


def launch_config(M: int) -> dict:
    """Tile sizes for an M-row input: decode tiles up to 16 rows, prefill tiles above."""
    return dict(DECODE_CONFIG if M <= MIN_DOT_ROWS else PREFILL_CONFIG)


@functools.lru_cache(maxsize=None)
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def plan_split_k(M: int, N: int, K: int, cfg: dict, block_k: int, split_k: int | None,
                 device: torch.device) -> tuple[int, int]:
    """(splits, K per split): how many programs share each output tile's K loop.

    A decode matmul (M = 1) has only N / BLOCK_N output tiles, fewer than a big GPU has
    multiprocessors, so each tile's K loop is cut into slices that run in parallel and
    write float32 partial sums, added afterwards. K per split is a multiple of ``block_k``
    (so an INT4 K tile never straddles two groups). ``split_k`` forces the number (tests);
    by default: enough to give every multiprocessor about two programs, on a GPU only.
    """
    if split_k is None:
        split_k = 1
        if device.type == "cuda" and not INTERPRETED:
            tiles = triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"])
            split_k = max(1, min(2 * _multiprocessors(device.index or 0) // tiles, MAX_SPLIT_K))
    split_k = max(1, min(split_k, triton.cdiv(K, block_k)))
    k_per_split = triton.cdiv(triton.cdiv(K, split_k), block_k) * block_k
    return triton.cdiv(K, k_per_split), k_per_split


@triton.jit
def _int8_matmul_kernel(
    x_ptr, w_ptr, scale_ptr, out_ptr,
    M, N, K, k_per_split,
    stride_xm, stride_wn, stride_om, stride_os,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_IN_FP32: tl.constexpr,
):
    """Program (pid_m, pid_n): out[rows, cols] = (x[rows, :] @ q[cols, :].T) * scale[cols]."""
    # Hint: load the weight tile transposed, [BLOCK_K, BLOCK_N], with offsets cols[None, :] * stride_wn + ks[:, None].
    # Hint: the scale is per output column: multiply the float32 accumulator once, after the K loop.
    raise NotImplementedError("Lesson 18: implement _int8_matmul_kernel in aios/layers/quant_kernels.py — see exercises/lesson18/README.md, 'What to implement'")


def int8_matmul(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, split_k: int | None = None) -> torch.Tensor:
    """x [M, K] (float16/bfloat16/float32) @ (qweight [N, K] int8 * scale [N, 1]).T -> [M, N] in x's dtype.

    split_k: programs along K (None: ``plan_split_k`` decides; see there).
    """
    # Hint: the kernel indexes x and the weight with a row stride and unit steps along K: make them contiguous.
    raise NotImplementedError("Lesson 18: implement int8_matmul in aios/layers/quant_kernels.py — see exercises/lesson18/README.md, 'What to implement'")


@triton.jit
def repeat8(packed):
    """[..., P] -> [..., 8 P]: each element repeated 8 times in place (a, b -> a a a a a a a a b ...)."""
    packed = tl.interleave(packed, packed)
    packed = tl.interleave(packed, packed)
    return tl.interleave(packed, packed)


@triton.jit
def _int4_matmul_kernel(
    x_ptr, qweight_ptr, qzeros_ptr, scales_ptr, out_ptr,
    M, N, K, group_size, k_per_split,
    stride_xm, stride_om, stride_os,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_IN_FP32: tl.constexpr,
):
    """Program (pid_m, pid_n): out[rows, cols] = x[rows, :] @ W.T[:, cols], W.T[k, n] = (q[k, n] - z[g, n]) * s[g, n]."""
    # Hint: column n lives in int32 n // 8 of its row, in nibble AWQ_REVERSE_ORDER[n % 8] = (n % 8) // 2 + 4 * (n % 2).
    # Hint: load each int32 once ([BLOCK_K, BLOCK_N // 8]) and repeat it 8 times along N (tl.interleave, three times).
    # Hint: BLOCK_K divides group_size, so one K tile has a single group: g = k0 // group_size.
    raise NotImplementedError("Lesson 18: implement _int4_matmul_kernel in aios/layers/quant_kernels.py — see exercises/lesson18/README.md, 'What to implement'")


def int4_matmul(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                group_size: int, split_k: int | None = None) -> torch.Tensor:
    """x [M, K] @ W.T -> [M, N] in x's dtype, W given by AWQ tensors.

    qweight [K, N / 8] int32, qzeros [K / group, N / 8] int32, scales [K / group, N] float16;
    K % group_size == 0 and group_size a power of two >= 16. split_k: programs along K (None: ``plan_split_k``).
    """
    M, K = x.shape
    N = scales.shape[1]
    if K % group_size or group_size < 16 or group_size & (group_size - 1):
        raise ValueError(f"int4_matmul needs a power-of-two group size >= 16 that divides K={K}, got {group_size}")
    # Hint: BLOCK_K = min(the config's BLOCK_K, group_size) keeps every K tile inside one group.
    raise NotImplementedError("Lesson 18: implement int4_matmul in aios/layers/quant_kernels.py — see exercises/lesson18/README.md, 'What to implement'")
