"""Sweep the launch settings of lesson 9's attention kernels on the GPU (Qwen3-0.6B shapes, bf16).

    PYTHONPATH=solutions python3 scripts/gpu/kernel_sweep.py [--json OUT.json]

Decode: 256 sequences with contexts uniform in 100-1100 (the headline's middle), and one
sequence of 600 with splits planned for a 4096-token graph; prefill: 29 prompts of ~560
tokens (one 16K-token prefill batch). Prints time, and bandwidth (decode) or TFLOP/s (prefill).
Each setting is checked against the plain-PyTorch reference before it is timed.
"""

import argparse
import itertools
import json
import random

import torch
import triton.testing

from aios.layers import triton_attention as ta
from aios.layers.paged_attention import paged_attention
from aios.utils.context import Context

Q_HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 16, 8, 128, 16


def batch(context_lens, query_lens, max_seqlen_k=None, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    blocks = [-(-n // BLOCK_SIZE) for n in context_lens]
    num_blocks = sum(blocks) + 4
    shape = (num_blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    k_cache = torch.randn(shape, generator=gen, device="cuda", dtype=torch.bfloat16)
    v_cache = torch.randn(shape, generator=gen, device="cuda", dtype=torch.bfloat16)
    order = torch.randperm(num_blocks, generator=gen, device="cuda").tolist()
    tables = [[order.pop() for _ in range(n)] for n in blocks]
    width = max(blocks)
    cu = [0]
    for n in query_lens:
        cu.append(cu[-1] + n)
    context = Context(
        is_prefill=max(query_lens) > 1,
        cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device="cuda"),
        context_lens=torch.tensor(context_lens, dtype=torch.int32, device="cuda"),
        block_tables=torch.tensor([t + [-1] * (width - len(t)) for t in tables], dtype=torch.int32, device="cuda"),
        max_seqlen_q=max(query_lens),
        max_seqlen_k=max_seqlen_k or max(context_lens),
    )
    q = torch.randn(cu[-1], Q_HEADS, HEAD_DIM, generator=gen, device="cuda", dtype=torch.bfloat16)
    return q, k_cache, v_cache, context


def rel_error(out, q, k_cache, v_cache, context, rows=None):
    """Relative error against the float32 reference (on the first ``rows`` sequences only, to stay quick)."""
    if rows is not None:
        ends = context.cu_seqlens_q[rows].item()
        context = Context(is_prefill=context.is_prefill, cu_seqlens_q=context.cu_seqlens_q[: rows + 1],
                          context_lens=context.context_lens[:rows], block_tables=context.block_tables[:rows],
                          max_seqlen_q=context.max_seqlen_q, max_seqlen_k=context.max_seqlen_k)
        q, out = q[:ends], out[:ends]
    ref = paged_attention(q.float(), k_cache.float(), v_cache.float(), context, HEAD_DIM**-0.5)
    return ((out.float() - ref).norm() / ref.norm()).item()


def sweep(name, settings, target, run, bytes_moved=None, flops=None, check_rows=None):
    rows = []
    for setting in settings:
        target.clear()
        target.update(setting)
        try:
            out, args = run()
            error = rel_error(out, *args, rows=check_rows)
            ms = triton.testing.do_bench(lambda: run(), warmup=25, rep=200, return_mode="median")
        except Exception as exc:  # a setting that does not compile (shared memory, registers)
            rows.append({"case": name, **setting, "error": type(exc).__name__})
            print(f"{name:10s} {setting}  failed: {type(exc).__name__}: {str(exc)[:80]}", flush=True)
            continue
        row = {"case": name, **setting, "ms": round(ms, 4), "rel_error": float(f"{error:.2e}")}
        if bytes_moved:
            row["TB/s"] = round(bytes_moved / ms / 1e9, 2)
        if flops:
            row["TFLOP/s"] = round(flops / ms / 1e9, 1)
        rows.append(row)
        print(f"{name:10s} {setting}  {ms * 1e3:8.1f} us  " + "  ".join(f"{k} {row[k]}" for k in ("TB/s", "TFLOP/s", "rel_error") if k in row), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    args = parser.parse_args()
    rng = random.Random(0)
    scale = HEAD_DIM**-0.5
    default_decode, default_prefill = dict(ta.DECODE_CONFIG), dict(ta.PREFILL_CONFIG)
    results = []

    decode_settings = [{"BLOCK_N": n, "num_warps": w, "num_stages": s}
                       for n, w, s in itertools.product((32, 64, 128), (4, 8), (2, 3, 4))]
    lens = [rng.randint(100, 1100) for _ in range(256)]
    q, k, v, ctx = batch(lens, [1] * 256, max_seqlen_k=4096)
    kv_bytes = sum(lens) * KV_HEADS * HEAD_DIM * 2 * 2
    results += sweep("decode256", decode_settings, ta.DECODE_CONFIG,
                     lambda: (ta.decode_attention(q, k, v, ctx, scale), (q, k, v, ctx)),
                     bytes_moved=kv_bytes, check_rows=8)
    q1, k1, v1, ctx1 = batch([600], [1], max_seqlen_k=4096, seed=1)
    results += sweep("decode1", decode_settings, ta.DECODE_CONFIG,
                     lambda: (ta.decode_attention(q1, k1, v1, ctx1, scale), (q1, k1, v1, ctx1)),
                     bytes_moved=600 * KV_HEADS * HEAD_DIM * 4)
    ta.DECODE_CONFIG.clear()
    ta.DECODE_CONFIG.update(default_decode)

    prefill_settings = [{"BLOCK_M": m, "BLOCK_N": n, "num_warps": w, "num_stages": s}
                        for m, n, w, s in itertools.product((64, 128), (32, 64, 128), (4, 8), (2, 3))]
    plens = [rng.randint(300, 820) for _ in range(29)]
    qp, kp, vp, ctxp = batch(plens, plens, seed=2)
    causal_flops = sum(n * (n + 1) / 2 for n in plens) * Q_HEADS * HEAD_DIM * 4
    results += sweep("prefill16k", prefill_settings, ta.PREFILL_CONFIG,
                     lambda: (ta.prefill_attention(qp, kp, vp, ctxp, scale), (qp, kp, vp, ctxp)),
                     flops=causal_flops, check_rows=3)
    ta.PREFILL_CONFIG.clear()
    ta.PREFILL_CONFIG.update(default_prefill)

    print("\nbest per case (default first):")
    for case in ("decode256", "decode1", "prefill16k"):
        ok = [r for r in results if r["case"] == case and "ms" in r and r["rel_error"] < 1e-2]
        default = default_decode if case.startswith("decode") else default_prefill
        base = next((r for r in ok if all(r[k] == v for k, v in default.items())), None)
        best = min(ok, key=lambda r: r["ms"])
        print(f"  {case}: default {base and base['ms']} ms, best {best['ms']} ms with "
              f"{ {k: best[k] for k in default} }")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
