"""Lesson 9: the engine's own attention kernels, written in Triton.

Three kernels replace the plain-PyTorch path of lessons 6-7 (``paged_attention.py``):

* ``store_kvcache``: one program per new token copies its K and V rows into the cache
  slot ``slot_mapping`` names (slot -1 is padding: nothing is written).
* ``prefill_attention``: FlashAttention over the paged cache. Each program owns a tile
  of queries of one sequence and one head, walks the sequence's keys tile by tile through
  its block table and keeps a running (online) softmax, so the [queries, keys] score
  matrix never exists in memory. Queries are the *last* positions of each context, so
  blocks that prefix caching filled earlier are read like any other.
* ``decode_attention``: one query per sequence. The context is cut into splits that
  run in parallel (flash-decoding); each split leaves a partial result and its
  log-sum-exp, and a small reduce kernel merges them.

Cache layout (same as the PyTorch path): [num_blocks, block_size, kv_heads, head_dim],
so a token's slot is a row of the flat [num_blocks * block_size, kv_heads, head_dim] view.
An FP8 cache (lesson 18, ``fp8_kv_cache.py``) is read the same way: the attention kernels widen each
K/V tile to q's dtype after loading it, and the caller folds the per-layer scales into ``scale``.

Without a GPU the kernels run in Triton's interpreter (numpy on the CPU). It must be
switched on before the kernels are defined, so this module turns it on when torch sees
no CUDA device (set TRITON_INTERPRET yourself to decide otherwise).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
LOG2_E = 1.4426950408889634

# Launch settings: queries per prefill program (BLOCK_M), keys per loop iteration (BLOCK_N),
# warps per program, software-pipeline stages. Chosen by a sweep on an H100 (docs/benchmarks.md).
PREFILL_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
DECODE_CONFIG = {"BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
# tl.dot needs at least 16 rows: a decode program pads its query heads up to this.
MIN_DOT_ROWS = 16
# Decode splits: aim for this many programs per streaming multiprocessor, at most this many splits.
PROGRAMS_PER_SM = 4
MAX_DECODE_SPLITS = 64


# ------------------------------------------------------------------ (a) KV-cache store


@triton.jit
def _store_kvcache_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
    key_stride, value_stride, row_size,
    BLOCK: tl.constexpr,
):
    """Program t copies token t's K and V rows ([kv_heads * head_dim] values) into its slot."""
    # BEGIN SOLUTION lesson9
    # Hint: a row of the flat cache view is kv_heads * head_dim contiguous values; BLOCK is row_size rounded up to a power of two.
    token = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + token)
    if slot < 0:
        return
    offsets = tl.arange(0, BLOCK)
    in_row = offsets < row_size
    key = tl.load(key_ptr + token * key_stride + offsets, mask=in_row)
    value = tl.load(value_ptr + token * value_stride + offsets, mask=in_row)
    tl.store(k_cache_ptr + slot * row_size + offsets, key, mask=in_row)
    tl.store(v_cache_ptr + slot * row_size + offsets, value, mask=in_row)
    # END SOLUTION


def store_kvcache(
    key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write each token's K and V into its cache slot, in place (the Triton twin of lesson 6's function).

    key, value: [tokens, kv_heads, head_dim]; k_cache, v_cache: [num_blocks, block_size, kv_heads, head_dim]
    (contiguous); slot_mapping: [tokens] int, -1 for padding.
    """
    # BEGIN SOLUTION lesson9
    # Hint: one program per token; pass the stride between tokens, since k and v may be views of a wider tensor.
    tokens, kv_heads, head_dim = key.shape
    key, value = _rows_contiguous(key), _rows_contiguous(value)
    row_size = kv_heads * head_dim
    _store_kvcache_kernel[(tokens,)](
        key, value, k_cache, v_cache, slot_mapping,
        key.stride(0), value.stride(0), row_size,
        BLOCK=triton.next_power_of_2(row_size),
    )
    # END SOLUTION


def _rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    """x with each token's [heads, head_dim] values contiguous (the token stride may be anything)."""
    if x.stride(-1) == 1 and x.stride(-2) == x.shape[-1]:
        return x
    return x.contiguous()


# ------------------------------------------------------------------ (b) prefill attention


@triton.jit
def _prefill_attention_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr,
    cu_seqlens_q_ptr, context_lens_ptr, block_tables_ptr,
    scale_log2,
    q_stride_token, q_stride_head, out_stride_token, out_stride_head,
    cache_stride_slot, cache_stride_head, block_table_stride,
    head_dim, block_size,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_IN_FP32: tl.constexpr, PRECISION: tl.constexpr,
):
    """Program (tile, seq, head): BLOCK_M queries of one sequence and one query head.

    Query i of a sequence with q_len new tokens and context_len cached ones sits at position
    context_len - q_len + i and sees keys 0 ..= that position. scale_log2 = scale * log2(e),
    so exp2 can stand in for exp.
    """
    # BEGIN SOLUTION lesson9
    # Hint: keep m (running max), l (running sum) and acc (running weighted sum of V) per query row.
    # Hint: when a new key tile raises the max from m to m_new, rescale l and acc by exp(m - m_new) first.
    tile, seq, head = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    q_start = tl.load(cu_seqlens_q_ptr + seq)
    q_len = tl.load(cu_seqlens_q_ptr + seq + 1) - q_start
    if tile * BLOCK_M >= q_len:
        return
    context_len = tl.load(context_lens_ptr + seq)
    kv_head = head // GROUP

    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    query_positions = context_len - q_len + rows
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < q_len
    dim_ok = dims < head_dim
    q = tl.load(
        q_ptr + (q_start + rows)[:, None] * q_stride_token + head * q_stride_head + dims[None, :],
        mask=row_ok[:, None] & dim_ok[None, :], other=0.0,
    )
    if DOT_IN_FP32:
        q = q.to(tl.float32)

    m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    # No query of this tile sees a key past its last query's position.
    kv_end = tl.minimum(context_len, context_len - q_len + (tile + 1) * BLOCK_M)
    block_table = block_tables_ptr + seq * block_table_stride
    for kv_start in range(0, kv_end, BLOCK_N):
        cols = kv_start + tl.arange(0, BLOCK_N)
        col_ok = cols < kv_end
        pages = tl.load(block_table + cols // block_size, mask=col_ok, other=0)
        slots = pages.to(tl.int64) * block_size + cols % block_size
        kv_offsets = slots[:, None] * cache_stride_slot + kv_head * cache_stride_head + dims[None, :]
        kv_mask = col_ok[:, None] & dim_ok[None, :]
        k = tl.load(k_cache_ptr + kv_offsets, mask=kv_mask, other=0.0)
        v = tl.load(v_cache_ptr + kv_offsets, mask=kv_mask, other=0.0)
        if DOT_IN_FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        else:  # an FP8 cache (lesson 18) is widened to q's dtype here; a no-op for a bf16 cache
            k = k.to(q.dtype)
            v = v.to(q.dtype)

        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
        visible = col_ok[None, :] & (cols[None, :] <= query_positions[:, None])
        scores = tl.where(visible, scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=1))
        rescale = tl.exp2(m - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l = l * rescale + tl.sum(p, axis=1)
        acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m = m_new

    out = acc / l[:, None]
    tl.store(
        out_ptr + (q_start + rows)[:, None] * out_stride_token + head * out_stride_head + dims[None, :],
        out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :],
    )
    # END SOLUTION


def prefill_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, context, scale: float
) -> torch.Tensor:
    """Causal attention of a packed prefill batch over the paged cache (K/V already stored).

    q: [tokens, q_heads, head_dim]; sequence i's queries are rows cu_seqlens_q[i]:cu_seqlens_q[i+1]
    and are the last positions of its context_lens[i] tokens. Returns [tokens, q_heads, head_dim].
    """
    # BEGIN SOLUTION lesson9
    # Hint: grid = (query tiles of the longest sequence, sequences, query heads); context.max_seqlen_q is a host int.
    _, q_heads, head_dim = q.shape
    kv_heads = k_cache.shape[2]
    out = torch.empty_like(q)
    num_seqs = context.context_lens.shape[0]
    grid = (triton.cdiv(context.max_seqlen_q, PREFILL_CONFIG["BLOCK_M"]), num_seqs, q_heads)
    _prefill_attention_kernel[grid](
        q, k_cache, v_cache, out,
        context.cu_seqlens_q, context.context_lens, context.block_tables,
        scale * LOG2_E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(1), k_cache.stride(2), context.block_tables.stride(0),
        head_dim, k_cache.shape[1],
        GROUP=q_heads // kv_heads, BLOCK_D=triton.next_power_of_2(head_dim),
        **_dot_options(q.dtype), **PREFILL_CONFIG,
    )
    return out
    # END SOLUTION


def _dot_options(dtype: torch.dtype) -> dict:
    """How the kernels multiply: float32 inputs exactly (no TF32); the interpreter only in float32."""
    return {"DOT_IN_FP32": INTERPRETED, "PRECISION": "ieee" if dtype == torch.float32 else "tf32"}


# ------------------------------------------------------------------ (c) decode attention


@triton.jit
def _decode_attention_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, part_out_ptr, part_lse_ptr,
    context_lens_ptr, block_tables_ptr,
    scale_log2, split_len,
    q_stride_token, q_stride_head,
    part_stride_seq, part_stride_head, part_stride_split, lse_stride_seq, lse_stride_head,
    cache_stride_slot, cache_stride_head, block_table_stride,
    head_dim, block_size,
    GROUP: tl.constexpr, GROUP_ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    WRITE_LSE: tl.constexpr, DOT_IN_FP32: tl.constexpr, PRECISION: tl.constexpr,
):
    """Program (seq, kv_head, split): the GROUP query heads sharing one KV head, over keys
    [split * split_len, (split + 1) * split_len) of the sequence's context.

    Writes the split's softmax-normalised output and, when WRITE_LSE, its log2-sum-exp2
    (-inf for an empty split). A sequence with context_len 0 (CUDA-graph padding) gets zeros.
    """
    # BEGIN SOLUTION lesson9
    # Hint: it is the prefill loop with one query per head; put the GROUP heads of a KV head in the rows of one tile.
    seq, kv_head, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    context_len = tl.load(context_lens_ptr + seq)
    kv_start_split = split * split_len
    kv_end = tl.minimum(kv_start_split + split_len, context_len)

    group_rows = tl.arange(0, GROUP_ROWS)
    heads = kv_head * GROUP + group_rows
    row_ok = group_rows < GROUP
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < head_dim
    q = tl.load(
        q_ptr + seq * q_stride_token + heads[:, None] * q_stride_head + dims[None, :],
        mask=row_ok[:, None] & dim_ok[None, :], other=0.0,
    )
    if DOT_IN_FP32:
        q = q.to(tl.float32)

    m = tl.full((GROUP_ROWS,), float("-inf"), tl.float32)
    l = tl.zeros((GROUP_ROWS,), tl.float32)
    acc = tl.zeros((GROUP_ROWS, BLOCK_D), tl.float32)
    block_table = block_tables_ptr + seq * block_table_stride
    for kv_start in range(kv_start_split, kv_end, BLOCK_N):
        cols = kv_start + tl.arange(0, BLOCK_N)
        col_ok = cols < kv_end
        pages = tl.load(block_table + cols // block_size, mask=col_ok, other=0)
        slots = pages.to(tl.int64) * block_size + cols % block_size
        kv_offsets = slots[:, None] * cache_stride_slot + kv_head * cache_stride_head + dims[None, :]
        kv_mask = col_ok[:, None] & dim_ok[None, :]
        k = tl.load(k_cache_ptr + kv_offsets, mask=kv_mask, other=0.0)
        v = tl.load(v_cache_ptr + kv_offsets, mask=kv_mask, other=0.0)
        if DOT_IN_FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        else:  # an FP8 cache (lesson 18) is widened to q's dtype here; a no-op for a bf16 cache
            k = k.to(q.dtype)
            v = v.to(q.dtype)

        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
        scores = tl.where(col_ok[None, :], scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=1))
        rescale = tl.exp2(m - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l = l * rescale + tl.sum(p, axis=1)
        acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m = m_new

    has_keys = l > 0
    out = acc / tl.where(has_keys, l, 1.0)[:, None]
    out_rows = seq * part_stride_seq + heads * part_stride_head + split * part_stride_split
    tl.store(
        part_out_ptr + out_rows[:, None] + dims[None, :],
        out.to(part_out_ptr.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :],
    )
    if WRITE_LSE:
        lse = tl.where(has_keys, m + tl.log2(tl.where(has_keys, l, 1.0)), float("-inf"))
        tl.store(part_lse_ptr + seq * lse_stride_seq + heads * lse_stride_head + split, lse, mask=row_ok)
    # END SOLUTION


@triton.jit
def _decode_reduce_kernel(
    part_out_ptr, part_lse_ptr, out_ptr,
    num_splits,
    part_stride_seq, part_stride_head, part_stride_split, lse_stride_seq, lse_stride_head,
    out_stride_token, out_stride_head,
    head_dim,
    SPLITS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Program (seq, head): merge the splits' outputs, each weighted by exp2(its lse - the largest lse)."""
    # BEGIN SOLUTION lesson9
    # Hint: a split with lse = -inf saw no keys and must get weight 0; a sequence with no keys at all gets zeros.
    seq, head = tl.program_id(0), tl.program_id(1)
    splits = tl.arange(0, SPLITS)
    split_ok = splits < num_splits
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < head_dim
    lse = tl.load(part_lse_ptr + seq * lse_stride_seq + head * lse_stride_head + splits,
                  mask=split_ok, other=float("-inf"))
    lse_max = tl.max(lse, axis=0)
    lse_max = tl.where(lse_max == float("-inf"), 0.0, lse_max)
    weights = tl.exp2(lse - lse_max)
    parts = tl.load(
        part_out_ptr + seq * part_stride_seq + head * part_stride_head
        + splits[:, None] * part_stride_split + dims[None, :],
        mask=split_ok[:, None] & dim_ok[None, :], other=0.0,
    ).to(tl.float32)
    total = tl.sum(weights, axis=0)
    out = tl.sum(weights[:, None] * parts, axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + seq * out_stride_token + head * out_stride_head + dims,
             out.to(out_ptr.dtype.element_ty), mask=dim_ok)
    # END SOLUTION


def plan_decode_splits(
    num_seqs: int, num_kv_heads: int, max_context_len: int, target_programs: int, block_n: int | None = None
) -> tuple[int, int]:
    """How to cut the context for flash-decoding: returns (num_splits, split_len).

    Enough splits that num_seqs * num_kv_heads * num_splits programs reach ``target_programs``
    (a few per multiprocessor), but no split shorter than ``block_n`` keys and at most
    MAX_DECODE_SPLITS. split_len is a multiple of ``block_n`` (default: the decode kernel's
    BLOCK_N); the splits cover max_context_len.
    The plan depends only on its arguments, never on tensor contents (CUDA graphs replay it).
    """
    # BEGIN SOLUTION lesson9
    block_n = block_n or DECODE_CONFIG["BLOCK_N"]
    most_splits = min(MAX_DECODE_SPLITS, max(1, triton.cdiv(max_context_len, block_n)))
    wanted = triton.cdiv(target_programs, max(1, num_seqs * num_kv_heads))
    num_splits = max(1, min(wanted, most_splits))
    split_len = triton.cdiv(triton.cdiv(max(max_context_len, 1), num_splits), block_n) * block_n
    num_splits = triton.cdiv(max(max_context_len, 1), split_len)
    return num_splits, split_len
    # END SOLUTION


def default_target_programs(device: torch.device) -> int:
    """PROGRAMS_PER_SM programs per multiprocessor on a GPU; 1 in the interpreter (no parallelism to win)."""
    if device.type != "cuda":
        return 1
    return PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count


def decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, context, scale: float,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Attention of one new token per sequence over its paged context (flash-decoding).

    q: [num_seqs, q_heads, head_dim]. Reads context.context_lens [num_seqs] and
    context.block_tables; context.max_seqlen_k (a host int, an upper bound of the context
    lengths) sizes the splits. ``num_splits`` overrides the plan (tests). Returns [num_seqs, q_heads, head_dim].
    """
    # BEGIN SOLUTION lesson9
    # Hint: with a single split the first kernel can write straight into the output; otherwise it fills
    # Hint: [num_seqs, q_heads, num_splits, head_dim] partials plus their lse, and the reduce kernel merges them.
    num_seqs, q_heads, head_dim = q.shape
    kv_heads = k_cache.shape[2]
    group = q_heads // kv_heads
    max_context = max(context.max_seqlen_k, 1)
    if num_splits is None:
        num_splits, split_len = plan_decode_splits(
            num_seqs, kv_heads, max_context, default_target_programs(q.device))
    else:
        block_n = DECODE_CONFIG["BLOCK_N"]
        split_len = triton.cdiv(triton.cdiv(max_context, num_splits), block_n) * block_n
    out = torch.empty_like(q)
    if num_splits == 1:
        part_out, part_lse = out.unsqueeze(2), q.new_empty(1, dtype=torch.float32)  # no lse needed
        lse_strides = (0, 0)
    else:
        part_out = q.new_empty(num_seqs, q_heads, num_splits, head_dim, dtype=torch.float32)
        part_lse = q.new_empty(num_seqs, q_heads, num_splits, dtype=torch.float32)
        lse_strides = (part_lse.stride(0), part_lse.stride(1))
    block_d = triton.next_power_of_2(head_dim)
    _decode_attention_kernel[(num_seqs, kv_heads, num_splits)](
        q, k_cache, v_cache, part_out, part_lse,
        context.context_lens, context.block_tables,
        scale * LOG2_E, split_len,
        q.stride(0), q.stride(1),
        part_out.stride(0), part_out.stride(1), part_out.stride(2), *lse_strides,
        k_cache.stride(1), k_cache.stride(2), context.block_tables.stride(0),
        head_dim, k_cache.shape[1],
        GROUP=group, GROUP_ROWS=max(MIN_DOT_ROWS, triton.next_power_of_2(group)),
        BLOCK_D=block_d, WRITE_LSE=num_splits > 1, **_dot_options(q.dtype), **DECODE_CONFIG,
    )
    if num_splits > 1:
        _decode_reduce_kernel[(num_seqs, q_heads)](
            part_out, part_lse, out,
            num_splits,
            part_out.stride(0), part_out.stride(1), part_out.stride(2), *lse_strides,
            out.stride(0), out.stride(1),
            head_dim,
            # One compiled variant for every plan (split counts vary from step to step).
            SPLITS=max(MAX_DECODE_SPLITS, triton.next_power_of_2(num_splits)), BLOCK_D=block_d,
            num_warps=4,
        )
    return out
    # END SOLUTION
