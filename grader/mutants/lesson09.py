"""Lesson 9 mutants: the Triton store, FlashAttention prefill and flash-decoding kernels.

The kernels run in Triton's interpreter on the CPU, so these mutants are slow to grade:
run a few at a time with ``--only`` while working on the tests.
"""

from grader.mutants import Mutant

TA = "aios/layers/triton_attention.py"

# The online-softmax update, as each kernel ends it (the prefill kernel then divides, the decode kernel guards).
PREFILL_TAIL = "        m = m_new\n\n    out = acc / l[:, None]\n"
DECODE_TAIL = "        m = m_new\n\n    has_keys = l > 0\n"
UPDATE = ("        l = l * rescale + tl.sum(p, axis=1)\n"
          "        acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)\n")

MUTANTS = [
    Mutant(9, "store-reads-the-row-of-its-slot", TA,
           find="    key = tl.load(key_ptr + token * key_stride + offsets, mask=in_row)",
           replace="    key = tl.load(key_ptr + slot * key_stride + offsets, mask=in_row)",
           bug="the store kernel reads the key row at the token's slot instead of at the token's index"),
    Mutant(9, "store-block-is-the-row-size", TA,
           find="        BLOCK=triton.next_power_of_2(row_size),",
           replace="        BLOCK=row_size,",
           bug="store_kvcache launches with BLOCK = kv_heads * head_dim, which tl.arange refuses unless it is a "
               "power of two"),
    Mutant(9, "prefill-no-rescale", TA,
           find=UPDATE + PREFILL_TAIL,
           replace=UPDATE.replace("acc * rescale[:, None]", "acc") + PREFILL_TAIL,
           bug="prefill's online softmax forgets to rescale the running output when the row max grows"),
    Mutant(9, "decode-sum-not-rescaled", TA,
           find=UPDATE + DECODE_TAIL,
           replace=UPDATE.replace("l = l * rescale +", "l = l +") + DECODE_TAIL,
           bug="decode's online softmax rescales the output but not the running sum when the row max grows"),
    Mutant(9, "causal-mask-excludes-the-diagonal", TA,
           find="        visible = col_ok[None, :] & (cols[None, :] <= query_positions[:, None])",
           replace="        visible = col_ok[None, :] & (cols[None, :] < query_positions[:, None])",
           bug="the causal mask hides the query's own key (< instead of <=)"),
    Mutant(9, "queries-at-the-start-of-the-context", TA,
           find="    query_positions = context_len - q_len + rows",
           replace="    query_positions = rows",
           bug="prefill places the queries at positions 0.. instead of at the end of the context (wrong once a "
               "prefix is cached)"),
    Mutant(9, "gqa-head-modulo", TA,
           find="    context_len = tl.load(context_lens_ptr + seq)\n    kv_head = head // GROUP",
           replace="    context_len = tl.load(context_lens_ptr + seq)\n    kv_head = head % GROUP",
           bug="prefill maps query head h to KV head h % GROUP instead of h // GROUP"),
    Mutant(9, "decode-tail-not-masked", TA,
           find="        scores = tl.where(col_ok[None, :], scores, float(\"-inf\"))\n",
           replace="",
           bug="decode does not mask the keys past the end of the context in the last tile: they score 0, not -inf"),
    Mutant(9, "decode-split-end-ignores-its-start", TA,
           find="    kv_end = tl.minimum(kv_start_split + split_len, context_len)",
           replace="    kv_end = tl.minimum(split_len, context_len)",
           bug="a decode split ends at split_len instead of its start + split_len: every split after the first is empty"),
    Mutant(9, "prefill-scale-without-log2e", TA,
           find="        context.cu_seqlens_q, context.context_lens, context.block_tables,\n        scale * LOG2_E,",
           replace="        context.cu_seqlens_q, context.context_lens, context.block_tables,\n        scale,",
           bug="prefill passes the plain scale to a kernel that uses exp2: the softmax is computed at the wrong "
               "temperature"),
    Mutant(9, "prefill-max-starts-at-zero", TA,
           find="    m = tl.full((BLOCK_M,), float(\"-inf\"), tl.float32)",
           replace="    m = tl.zeros((BLOCK_M,), tl.float32)",
           bug="prefill starts the running max at 0 instead of -inf: when every score of a row is very negative, "
               "exp2(score - 0) underflows and the row divides 0 by 0"),
    Mutant(9, "lse-in-natural-log", TA,
           find="        lse = tl.where(has_keys, m + tl.log2(tl.where(has_keys, l, 1.0)), float(\"-inf\"))",
           replace="        lse = tl.where(has_keys, m + tl.log(tl.where(has_keys, l, 1.0)), float(\"-inf\"))",
           bug="a decode split's lse adds the natural log of its sum to a max kept in log2 units"),
    Mutant(9, "merge-with-natural-exp", TA,
           find="    weights = tl.exp2(lse - lse_max)",
           replace="    weights = tl.exp(lse - lse_max)",
           bug="the split merge weights the splits with exp although their lse is a log2-sum-exp2"),
    Mutant(9, "merge-without-max-shift", TA,
           find="    weights = tl.exp2(lse - lse_max)",
           replace="    weights = tl.exp2(lse)",
           bug="the split merge weights each split by exp2(lse) without subtracting the largest lse first: "
               "it overflows when attention is sharp"),
    Mutant(9, "empty-split-divides-by-zero", TA,
           find="    out = acc / tl.where(has_keys, l, 1.0)[:, None]",
           replace="    out = acc / l[:, None]",
           bug="decode divides by the running sum without guarding an empty split (l = 0 gives NaN)"),
    Mutant(9, "split-len-not-whole-tiles", TA,
           find="    split_len = triton.cdiv(triton.cdiv(max(max_context_len, 1), num_splits), block_n) * block_n\n",
           replace="    split_len = triton.cdiv(max(max_context_len, 1), num_splits)\n",
           bug="plan_decode_splits does not round split_len up to whole key tiles"),
]
