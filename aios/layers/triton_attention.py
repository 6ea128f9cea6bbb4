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
    # Hint: a row of the flat cache view is kv_heads * head_dim contiguous values; BLOCK is row_size rounded up to a power of two.
    raise NotImplementedError("Lesson 9: implement _store_kvcache_kernel in aios/layers/triton_attention.py — see exercises/lesson09/README.md, 'What to implement'")


def store_kvcache(
    key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write each token's K and V into its cache slot, in place (the Triton twin of lesson 6's function).

    key, value: [tokens, kv_heads, head_dim]; k_cache, v_cache: [num_blocks, block_size, kv_heads, head_dim]
    (contiguous); slot_mapping: [tokens] int, -1 for padding.
    """
    # Hint: one program per token; pass the stride between tokens, since k and v may be views of a wider tensor.
    raise NotImplementedError("Lesson 9: implement store_kvcache in aios/layers/triton_attention.py — see exercises/lesson09/README.md, 'What to implement'")


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
    # Hint: keep m (running max), l (running sum) and acc (running weighted sum of V) per query row.
    # Hint: when a new key tile raises the max from m to m_new, rescale l and acc by exp(m - m_new) first.
    raise NotImplementedError("Lesson 9: implement _prefill_attention_kernel in aios/layers/triton_attention.py — see exercises/lesson09/README.md, 'What to implement'")


def prefill_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, context, scale: float
) -> torch.Tensor:
    """Causal attention of a packed prefill batch over the paged cache (K/V already stored).

    q: [tokens, q_heads, head_dim]; sequence i's queries are rows cu_seqlens_q[i]:cu_seqlens_q[i+1]
    and are the last positions of its context_lens[i] tokens. Returns [tokens, q_heads, head_dim].
    """
    # Hint: grid = (query tiles of the longest sequence, sequences, query heads); context.max_seqlen_q is a host int.
    raise NotImplementedError("Lesson 9: implement prefill_attention in aios/layers/triton_attention.py — see exercises/lesson09/README.md, 'What to implement'")


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
    # Hint: it is the prefill loop with one query per head; put the GROUP heads of a KV head in the rows of one tile.
    raise NotImplementedError("Lesson 9: implement _decode_attention_kernel in aios/layers/triton_attention.py — see exercises/lesson09/README.md, 'What to implement'")


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
    # Hint: a split with lse = -inf saw no keys and must get weight 0; a sequence with no keys at all gets zeros.
    raise NotImplementedError("Lesson 9: implement _decode_reduce_kernel in aios/layers/triton_attention.py — see exercises/lesson09/README.md, 'What to implement'")


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
    raise NotImplementedError("Lesson 9: implement plan_decode_splits in aios/layers/triton_attention.py — see exercises/lesson09/README.md, 'What to implement'")


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
    # Hint: with a single split the first kernel can write straight into the output; otherwise it fills
    # Hint: [num_seqs, q_heads, num_splits, head_dim] partials plus their lse, and the reduce kernel merges them.
    raise NotImplementedError("Lesson 9: implement decode_attention in aios/layers/triton_attention.py — see exercises/lesson09/README.md, 'What to implement'")
