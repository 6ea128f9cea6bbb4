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

* ``fp8_block_matmul(x, weight, weight_scale_inv)``: FP8 W8A8 with the Qwen3-FP8 block
  scales. x is quantized at run time, per token and per 128 inputs (``quantize_fp8_rows``: one
  scale per [1, 128] slice), so each K step of 128 multiplies two e4m3 tiles on the tensor cores
  (float32 accumulation) and scales the partial product by the token's and the weight block's
  factors: ``acc += dot(xq, wq) * sx[m, g] * sw[n // 128, g]``.

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
    # Hint: within a group a column's scale is one number: dot the centred codes (q - z), then scale.
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


@triton.jit
def _fp8_quantize_rows_kernel(x_ptr, out_ptr, scale_ptr, M, K, stride_xm, stride_om, stride_sm, stride_sg,
                              BLOCK: tl.constexpr, FP8_MAX: tl.constexpr):
    """Program (row, group): out[row, g*B:(g+1)*B] = x / s in e4m3, s = max |x slice| / FP8_MAX (s = 1 for zeros).

    Rows from M on (padding the grid may add: fp8_scaled_mm) read as zeros; the scale of (row, g) goes to
    ``scale_ptr + row * stride_sm + g * stride_sg`` (row-major, or outer-dim-major for cuBLAS).
    """
    row = tl.program_id(0)
    group = tl.program_id(1)
    ks = group * BLOCK + tl.arange(0, BLOCK)
    k_ok = ks < K
    x = tl.load(x_ptr + row * stride_xm + ks, mask=k_ok & (row < M), other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(x), axis=0)
    scale = tl.where(amax > 0, amax / FP8_MAX, 1.0)
    q = tl.clamp(x / scale, -FP8_MAX, FP8_MAX)
    tl.store(out_ptr + row * stride_om + ks, q.to(out_ptr.dtype.element_ty), mask=k_ok)
    tl.store(scale_ptr + row * stride_sm + group * stride_sg, scale)


def quantize_fp8_rows(x: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic activation quantization: x [M, K] -> (xq [M, K] float8_e4m3fn, scale [M, ceil(K / block)] float32).

    Every [1, block] slice of a row gets its own scale, so x ~= xq * scale (repeated over its slice).
    Triton's interpreter rounds float32 -> e4m3 wrongly when the rounding carries into the exponent
    (-125.3 -> -64 instead of -128), so without a GPU the same arithmetic runs in torch.
    """
    M, K = x.shape
    groups = triton.cdiv(K, block)
    if INTERPRETED or x.device.type != "cuda":
        fp8_max = torch.finfo(torch.float8_e4m3fn).max
        padded = torch.nn.functional.pad(x.float(), (0, groups * block - K)).reshape(M, groups, block)
        amax = padded.abs().amax(dim=2)
        scale = torch.where(amax > 0, amax / fp8_max, torch.ones_like(amax))
        xq = (padded / scale[:, :, None]).clamp(-fp8_max, fp8_max).reshape(M, groups * block)[:, :K]
        return xq.to(torch.float8_e4m3fn).contiguous(), scale
    x = x.contiguous()
    out = torch.empty(M, K, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty(M, groups, dtype=torch.float32, device=x.device)
    if M:
        _fp8_quantize_rows_kernel[(M, groups)](x, out, scale, M, K, x.stride(0), out.stride(0), scale.stride(0), 1,
                                               BLOCK=block, FP8_MAX=torch.finfo(torch.float8_e4m3fn).max)
    return out, scale


@triton.jit
def _fp8_block_matmul_kernel(
    x_ptr, x_scale_ptr, w_ptr, w_scale_ptr, out_ptr,
    M, N, K, num_groups, groups_per_split,
    stride_xm, stride_xsm, stride_wn, stride_wsn, stride_om, stride_os,
    BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_IN_FP32: tl.constexpr,
):
    """Program (pid_m, pid_n, pid_k): out[pid_k, rows, cols] = sum over the K blocks g of split pid_k of
    (xq[rows, g] @ wq[cols, g].T) * sx[rows, g] * sw[cols // B, g]."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)  # this program's run of K blocks (split-K, decode shapes)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    weight_block_rows = cols // BLOCK
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for group in range(pid_k * groups_per_split, tl.minimum((pid_k + 1) * groups_per_split, num_groups)):
        ks = group * BLOCK + tl.arange(0, BLOCK)
        k_ok = ks < K
        x = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptr + cols[None, :] * stride_wn + ks[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        x_scale = tl.load(x_scale_ptr + rows * stride_xsm + group, mask=row_ok, other=0.0)
        w_scale = tl.load(w_scale_ptr + weight_block_rows * stride_wsn + group, mask=col_ok, other=0.0)
        if DOT_IN_FP32:
            part = tl.dot(x.to(tl.float32), w.to(tl.float32), input_precision="ieee")
        else:
            part = tl.dot(x, w)
        acc += part * x_scale[:, None] * w_scale[None, :]
    tl.store(out_ptr + pid_k * stride_os + rows[:, None] * stride_om + cols[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


#: FP8 W8A8 tiles: K steps are the format's 128-wide blocks.
FP8_DECODE_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 64, "num_warps": 4, "num_stages": 4}
FP8_MEDIUM_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4, "num_stages": 3}
FP8_PREFILL_CONFIG = {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3}


def fp8_block_matmul(x: torch.Tensor, weight: torch.Tensor, weight_scale_inv: torch.Tensor,
                     block: int = 128, split_k: int | None = None) -> torch.Tensor:
    """FP8 W8A8: x [M, K] -> [M, N] in x's dtype, W given as weight [N, K] float8_e4m3fn and its block scales
    weight_scale_inv [ceil(N / block), ceil(K / block)] (W ~= weight * scale of its block).

    x is quantized per token and per ``block`` inputs (``quantize_fp8_rows``), then both e4m3
    operands meet in ``tl.dot`` with float32 accumulation. Decode shapes (M <= 16) split the K blocks
    over programs like the INT8/INT4 kernels (``plan_split_k``; ``split_k`` forces the number).
    """
    M, K = x.shape
    N = weight.shape[0]
    xq, x_scale = quantize_fp8_rows(x, block)
    weight, weight_scale_inv = weight.contiguous(), weight_scale_inv.contiguous()
    cfg = FP8_DECODE_CONFIG if M <= MIN_DOT_ROWS else FP8_MEDIUM_CONFIG if M <= 64 else FP8_PREFILL_CONFIG
    num_groups = triton.cdiv(K, block)
    if split_k is None and M > MIN_DOT_ROWS:
        split_k = 1
    splits, k_per_split = plan_split_k(M, N, K, cfg, block, split_k, x.device)
    out = torch.empty(splits, M, N, dtype=x.dtype if splits == 1 else torch.float32, device=x.device)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]), triton.cdiv(N, cfg["BLOCK_N"]), splits)
    _fp8_block_matmul_kernel[grid](
        xq, x_scale, weight, weight_scale_inv, out, M, N, K, num_groups, k_per_split // block,
        xq.stride(0), x_scale.stride(0), weight.stride(0), weight_scale_inv.stride(0), out.stride(1), out.stride(0),
        BLOCK=block, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], DOT_IN_FP32=INTERPRETED,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out[0] if splits == 1 else out.sum(0).to(x.dtype)
