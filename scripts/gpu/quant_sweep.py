"""Lesson 18 on the GPU: where the time of a quantized decode goes.

    PYTHONPATH=solutions python3 scripts/gpu/quant_sweep.py [--json OUT.json] [--engine PRESET] [--no-sweep]

1. Each INT8/INT4 matmul of the Qwen3-8B shapes at M = 1 (a batch-1 decode step) and M = 16,
   timed with CUDA graphs (triton.testing.do_bench_cudagraph) against bf16 ``F.linear``, for the
   shipped launch settings and a few others (BLOCK_N, BLOCK_K, warps, split-K): the bandwidth
   each reaches says whether a kernel streams its weight bytes or is bound by something else.
2. With --engine: batch-1 decode of the PRESET shape (random weights) with each method, and
   torch.profiler's kernel table for a few decode steps (is the time in the matmuls?).
"""

import argparse
import itertools
import json
from pathlib import Path

import torch
import torch.nn.functional as F
import triton.testing

from aios.layers import quant_kernels as qk
from aios.layers import quantization as qz

# (name, N, K): Qwen3-8B's per-layer projections (hidden 4096, 32/8 heads of 128, intermediate 12288).
SHAPES = [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 24576, 4096), ("down", 4096, 12288)]


def bench(fn) -> float:
    """Microseconds per call, CUDA-graph replayed (no launch overhead)."""
    return triton.testing.do_bench_cudagraph(fn, rep=50) * 1e3


def sweep(M: int, rows: list) -> None:
    configs = [dict(qk.DECODE_CONFIG if M <= 16 else qk.PREFILL_CONFIG, split_k=None, label="shipped")]
    grid = list(itertools.product((32, 64, 128), (64, 128, 256), (4,), (None, 1)))
    grid += [(128, 128, 8, None), (256, 64, 8, None)]
    if M > 1:  # the settings sweep is for decode; larger M times the shipped settings only
        grid = []
    for block_n, block_k, warps, split_k in grid:
        configs.append(dict(BLOCK_M=16, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=3,
                            split_k=split_k, label=f"n{block_n}k{block_k}w{warps}s{split_k}"))
    for name, N, K in SHAPES:
        gen = torch.Generator(device="cuda").manual_seed(0)
        w = torch.randn(N, K, device="cuda", generator=gen, dtype=torch.float32) * 0.02
        x = torch.randn(M, K, device="cuda", generator=gen, dtype=torch.bfloat16)
        wb = w.to(torch.bfloat16)
        base = bench(lambda: F.linear(x, wb))
        q8, s8 = qz.quantize_int8(w)
        q4, z4, sc4 = qz.quantize_int4(w, 128)
        sc4 = sc4.to(torch.bfloat16)
        ref8 = F.linear(x.float(), qz.dequantize_int8(q8, s8)).float()
        ref4 = F.linear(x.float(), qz.dequantize_int4(q4, z4, sc4, 128)).float()
        bytes_bf16 = N * K * 2
        rows.append(dict(M=M, shape=name, method="bf16", config="F.linear", us=round(base, 1),
                         tb_s=round(bytes_bf16 / base / 1e6, 2)))
        print(f"M={M} {name:8s} bf16 {base:8.1f} us  {bytes_bf16 / base / 1e6:5.2f} TB/s", flush=True)
        saved = dict(qk.DECODE_CONFIG), dict(qk.PREFILL_CONFIG)
        for method, call, ref, nbytes in (
                ("int8", lambda sk: qk.int8_matmul(x, q8, s8, split_k=sk), ref8, N * K),
                ("int4", lambda sk: qk.int4_matmul(x, q4, z4, sc4, 128, split_k=sk), ref4, N * K // 2)):
            best = None
            for cfg in configs:
                settings = {k: cfg[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages")}
                qk.DECODE_CONFIG.update(settings)
                qk.PREFILL_CONFIG.update(settings)
                try:
                    out = call(cfg["split_k"]).float()
                    err = (out - ref).abs().max().item() / ref.abs().max().item()
                    us = bench(lambda: call(cfg["split_k"]))
                except Exception as exc:  # a setting the compiler refuses
                    print(f"  {method} {cfg['label']}: {type(exc).__name__}: {str(exc)[:80]}")
                    continue
                finally:
                    qk.DECODE_CONFIG.clear(); qk.DECODE_CONFIG.update(saved[0])
                    qk.PREFILL_CONFIG.clear(); qk.PREFILL_CONFIG.update(saved[1])
                row = dict(M=M, shape=name, method=method, config=cfg["label"], us=round(us, 1),
                           tb_s=round(nbytes / us / 1e6, 2), speedup=round(base / us, 2), rel_err=float(f"{err:.2e}"))
                rows.append(row)
                if cfg["label"] == "shipped" or best is None or us < best["us"]:
                    if cfg["label"] != "shipped":
                        best = row
                    else:
                        print(f"  {method} shipped {us:8.1f} us  x{base / us:.2f}  err {err:.1e}", flush=True)
            if best:
                print(f"  {method} best {best['config']} {best['us']:8.1f} us  x{best['speedup']}", flush=True)
        if torch.cuda.get_device_capability() >= (8, 9):  # FP8 W8A8, shipped settings (activation quantization included)
            w8, s8inv = qz.quantize_fp8_block(w)
            us = bench(lambda: qk.fp8_block_matmul(x, w8, s8inv))
            rows.append(dict(M=M, shape=name, method="fp8", config="shipped", us=round(us, 1),
                             tb_s=round(N * K / us / 1e6, 2), speedup=round(base / us, 2)))
            print(f"  fp8 W8A8 shipped {us:8.1f} us  x{base / us:.2f}", flush=True)


def shape_folder(preset: str) -> str:
    """config.json and tokenizer of a make-model preset, no weights (the engine runs load_format='dummy')."""
    import tempfile

    from aios.fixtures import tokenizer
    from aios.fixtures.make import write_model_files
    from aios.fixtures.presets import TOKENIZER_SIZES, build_config

    config = build_config(preset, dtype="bfloat16")
    tok_json = tokenizer.tokenizer_json(TOKENIZER_SIZES[preset])
    ids = tokenizer.special_token_ids(tok_json)
    config.update(bos_token_id=ids[tokenizer.ENDOFTEXT], eos_token_id=ids[tokenizer.IM_END])
    folder = Path(tempfile.mkdtemp(prefix=f"qwen3-{preset}-"))
    write_model_files(folder, config, tok_json)
    return str(folder)


def engine(preset: str) -> None:
    from torch.profiler import ProfilerActivity, profile

    from aios.bench.throughput import build_engine, run_batch1_decode
    from aios.sampling_params import SamplingParams

    model_dir = shape_folder(preset)
    for method in (None, "int8", "int4", "fp8"):
        llm = build_engine(model_dir, quantization=method, dtype="bfloat16", max_num_seqs=8, max_model_len=1024)
        result = run_batch1_decode(llm, prompt_len=128, output_len=64)
        print(f"engine {method}: {result.output_tokens_per_second:.1f} tok/s; {json.dumps(result.engine)}", flush=True)
        llm.add_request(list(range(10, 138)), SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True))
        for _ in range(5):
            llm.step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                llm.step()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12), flush=True)
        while not llm.is_finished():
            llm.step()
        llm.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    parser.add_argument("--engine", metavar="PRESET", help="a make-model preset (e.g. 8b) for the engine part")
    parser.add_argument("--no-sweep", action="store_true")
    args = parser.parse_args()
    rows = []
    if not args.no_sweep:
        for M in (1, 256):
            sweep(M, rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if args.engine:
        engine(args.engine)


if __name__ == "__main__":
    main()
