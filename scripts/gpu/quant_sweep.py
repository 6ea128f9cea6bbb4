"""Lesson 18 on the GPU: where the time of a quantized decode goes.

    PYTHONPATH=solutions python3 scripts/gpu/quant_sweep.py [--json OUT.json] [--engine PRESET]
                                                            [--no-sweep] [--no-gemv] [--old-grid] [--dense]

1. GEMV (``aios.layers.quant_gemv``) at M = 1 and M = 4 on the Qwen3-8B shapes: bf16 ``F.linear``,
   the lesson's tl.dot kernels (``quant_kernels.int8_matmul`` / ``int4_matmul``, shipped settings),
   every GEMV candidate setting and the dispatcher the engine calls (``int8_linear`` / ``int4_linear``,
   tuned on its first call; its choice is printed). Each time twice: CUDA-graph replays of the call
   alone ("us", weights of the small matrices stay in the 50 MB L2 cache between replays) and with a
   128 MB buffer overwritten before each call, minus the overwrite alone ("us_cold": the weight comes
   from memory, as in a decode step, where the other layers' weights evict it).
2. The lesson's tl.dot kernels at M = 1 and M = 256 (shipped settings; ``--old-grid``: also a grid of
   BLOCK_N / BLOCK_K / split-K settings at M = 1), and FP8 W8A8.
3. With --engine: batch-1 decode of the PRESET shape (random weights) with each method, and
   torch.profiler's kernel table for a few decode steps (is the time in the matmuls?).

--dense instead: the bf16 GEMV of the dense linears (``aios.layers.dense_gemv``) against ``F.linear`` at
M = 1 and 4 on the Qwen3-0.6B and 8B shapes: every setting and the tuned dispatcher, hot, cold and "seq"
(calls on different copies of the weight back to back in one CUDA graph, > 200 MB in all: each call
reads its weight from memory right after the previous kernel, as the layers of a decode step do).

Every measurement that fails prints its error and the sweep goes on; the JSON file is rewritten
after each shape, so a run cut short keeps what it measured.
"""

import argparse
import itertools
import json
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
import triton.testing

from aios.layers import dense_gemv as dg
from aios.layers import quant_gemv as qg
from aios.layers import quant_kernels as qk
from aios.layers import quantization as qz

# (name, N, K): Qwen3-8B's per-layer projections (hidden 4096, 32/8 heads of 128, intermediate 12288).
SHAPES = [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 24576, 4096), ("down", 4096, 12288)]
# Qwen3-0.6B's (hidden 1024, 16/8 heads of 128, intermediate 3072), for --dense.
SHAPES_06B = [("qkv", 4096, 1024), ("o", 1024, 2048), ("gate_up", 6144, 1024), ("down", 1024, 3072)]
#: Bytes of weight copies the "seq" timing cycles through (over four times the 50 MB L2 cache).
SEQ_BYTES = 256 * 1024 * 1024
#: Milliseconds of calls per --dense timing (the default 50 would take over ten minutes for all the settings).
DENSE_REP = 10
ROWS: list = []
JSON_PATH: str | None = None


def save() -> None:
    if JSON_PATH:
        Path(JSON_PATH).write_text(json.dumps({"rows": ROWS, "tuning": qg.TUNING_LOG}, indent=1))


def bench(fn, rep: int = 50) -> float:
    """Microseconds per call, CUDA-graph replayed (no launch overhead; ``rep``: milliseconds of calls per timing)."""
    return triton.testing.do_bench_cudagraph(fn, rep=rep) * 1e3


_FLUSH = {}


def bench_cold(fn, rep: int = 50) -> float:
    """Microseconds per call with the L2 cache overwritten before each call (graph of flush + call, minus flush)."""
    if "buf" not in _FLUSH:
        _FLUSH["buf"] = torch.empty(32 * 1024 * 1024, dtype=torch.int32, device="cuda")
        _FLUSH["us"] = bench(lambda: _FLUSH["buf"].zero_())
    buf = _FLUSH["buf"]

    def both():
        buf.zero_()
        fn()

    return max(bench(both, rep) - _FLUSH["us"], 0.0)


def record(M, shape, method, config, fn, base, base_cold, nbytes, ref=None, rep: int = 50) -> dict | None:
    """Time ``fn`` (hot and cold), check it against ``ref``, append a row; None when it fails."""
    try:
        err = None
        if ref is not None:
            out = fn().float()
            err = float(f"{((out - ref).abs().max() / ref.abs().max()).item():.2e}")
        us, cold = bench(fn, rep), bench_cold(fn, rep)
    except Exception as exc:  # a setting the compiler or the GPU refuses
        print(f"  {method} {config}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
        return None
    row = dict(M=M, shape=shape, method=method, config=config, us=round(us, 1), us_cold=round(cold, 1),
               tb_s_cold=round(nbytes / max(cold, 1e-3) / 1e6, 2), speedup=round(base / us, 2),
               speedup_cold=round(base_cold / max(cold, 1e-3), 2), rel_err=err)
    ROWS.append(row)
    print(f"  {method:5s} {config:34s} {us:7.1f} us  cold {cold:7.1f} us  {row['tb_s_cold']:5.2f} TB/s  "
          f"x{row['speedup']:.2f} (cold x{row['speedup_cold']:.2f})  err {err}", flush=True)
    return row


def make_weights(N, K, M):
    gen = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(N, K, device="cuda", generator=gen, dtype=torch.float32) * 0.02
    x = torch.randn(M, K, device="cuda", generator=gen, dtype=torch.bfloat16)
    return w, x


def gemv_sweep(M: int, all_candidates: bool) -> None:
    """bf16, the tl.dot kernels, the GEMV settings and the tuned dispatcher at M rows."""
    for name, N, K in SHAPES:
        print(f"\nM={M} {name} {K}->{N}", flush=True)
        try:
            w, x = make_weights(N, K, M)
            wb = w.to(torch.bfloat16)
            q8, s8 = qz.quantize_int8(w)
            q4, z4, sc4 = qz.quantize_int4(w, 128)
            sc4 = sc4.to(torch.bfloat16)
            ref8 = F.linear(x.float(), qz.dequantize_int8(q8, s8))
            ref4 = F.linear(x.float(), qz.dequantize_int4(q4, z4, sc4, 128))
            del w
        except Exception:
            traceback.print_exc()
            continue
        base, base_cold = bench(lambda: F.linear(x, wb)), bench_cold(lambda: F.linear(x, wb))
        ROWS.append(dict(M=M, shape=name, method="bf16", config="F.linear", us=round(base, 1),
                         us_cold=round(base_cold, 1), tb_s_cold=round(N * K * 2 / base_cold / 1e6, 2)))
        print(f"  bf16  F.linear {base:7.1f} us  cold {base_cold:7.1f} us  {N * K * 2 / base_cold / 1e6:5.2f} TB/s",
              flush=True)
        bytes8, bytes4 = N * K, N * K // 2
        record(M, name, "int8", "tl.dot shipped", lambda: qk.int8_matmul(x, q8, s8), base, base_cold, bytes8, ref8)
        record(M, name, "int4", "tl.dot shipped", lambda: qk.int4_matmul(x, q4, z4, sc4, 128), base, base_cold,
               bytes4, ref4)
        candidates8 = qg.INT8_CANDIDATES + qg.INT8_SWEEP_EXTRA if all_candidates else (qg.INT8_DEFAULT,)
        candidates4 = qg.INT4_CANDIDATES + qg.INT4_SWEEP_EXTRA if all_candidates else (qg.INT4_DEFAULT,)
        for cfg in candidates8:
            record(M, name, "int8", "gemv " + cfg.label, lambda cfg=cfg: qg.int8_gemv(x, q8, s8, cfg), base, base_cold,
                   bytes8, ref8)
        for cfg in candidates4:
            record(M, name, "int4", "gemv " + cfg.label, lambda cfg=cfg: qg.int4_gemv(x, q4, z4, sc4, 128, cfg), base,
                   base_cold, bytes4, ref4)
        for method, call, ref, nbytes in (("int8", lambda: qg.int8_linear(x, q8, s8), ref8, bytes8),
                                          ("int4", lambda: qg.int4_linear(x, q4, z4, sc4, 128), ref4, bytes4)):
            try:
                tuned_before = len(qg.TUNING_LOG)
                call()  # the first call of a shape tunes
                torch.cuda.synchronize()
                choice = qg.TUNING_LOG[-1]["choice"] if len(qg.TUNING_LOG) > tuned_before else "untuned/cached"
            except Exception as exc:
                choice = f"{type(exc).__name__}: {exc}"[:120]
            record(M, name, method, f"dispatch -> {choice}", call, base, base_cold, nbytes, ref)
        save()


def bench_seq(call, weight: torch.Tensor) -> float:
    """Microseconds per ``call(w)`` when calls on copies of ``weight`` (SEQ_BYTES in all, at least two) run back to
    back in one CUDA-graph replay: no launch gaps, and each weight comes from memory."""
    copies = max(2, -(-SEQ_BYTES // (weight.numel() * weight.element_size())))
    weights = [weight.clone() for _ in range(copies)]
    try:
        return bench(lambda: [call(w) for w in weights], DENSE_REP) / copies
    finally:
        del weights


def dense_sweep(M: int) -> None:
    """bf16 F.linear against every dense GEMV setting and the tuned dispatcher, at the 0.6B and 8B shapes."""
    shapes = [("0.6b " + name, N, K) for name, N, K in SHAPES_06B] + [("8b " + name, N, K) for name, N, K in SHAPES]
    for name, N, K in shapes:
        print(f"\nM={M} {name} {K}->{N} (bf16)", flush=True)
        try:
            w, x = make_weights(N, K, M)
            wb = w.to(torch.bfloat16)
            del w
            ref = F.linear(x.float(), wb.float())
        except Exception:
            traceback.print_exc()
            continue
        nbytes = N * K * 2
        base, base_cold = bench(lambda: F.linear(x, wb), DENSE_REP), bench_cold(lambda: F.linear(x, wb), DENSE_REP)
        row = dict(M=M, shape=name, method="bf16", config="F.linear", us=round(base, 1), us_cold=round(base_cold, 1),
                   tb_s_cold=round(nbytes / base_cold / 1e6, 2))
        ROWS.append(row)
        calls = [("F.linear", lambda w: F.linear(x, w), row)]
        for cfg in dg.DENSE_CANDIDATES + dg.DENSE_SWEEP_EXTRA:
            calls.append((f"gemv {cfg.label}", lambda w, cfg=cfg: dg.dense_gemv(x, w, None, cfg),
                          record(M, name, "bf16", f"gemv {cfg.label}", lambda cfg=cfg: dg.dense_gemv(x, wb, None, cfg),
                                 base, base_cold, nbytes, ref, DENSE_REP)))
        tuned_before = len(qg.TUNING_LOG)
        try:
            dg.dense_linear(x, wb)  # the first call of a shape tunes
            torch.cuda.synchronize()
            choice = qg.TUNING_LOG[-1]["choice"] if len(qg.TUNING_LOG) > tuned_before else "untuned/cached"
        except Exception as exc:
            choice = f"{type(exc).__name__}: {exc}"[:120]
        calls.append((f"dispatch -> {choice}", lambda w: dg.dense_linear(x, w),
                      record(M, name, "bf16", f"dispatch -> {choice}", lambda: dg.dense_linear(x, wb), base, base_cold,
                             nbytes, ref, DENSE_REP)))
        base_seq = None
        for label, call, row in calls:
            if row is None:
                continue
            try:
                seq = bench_seq(call, wb)
            except Exception as exc:
                print(f"  seq {label}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
                continue
            base_seq = base_seq or seq
            row.update(us_seq=round(seq, 2), tb_s_seq=round(nbytes / seq / 1e6, 2), speedup_seq=round(base_seq / seq, 2))
            print(f"  seq   {label:34s} {seq:7.2f} us  {row['tb_s_seq']:5.2f} TB/s  x{row['speedup_seq']:.2f}", flush=True)
        save()


def old_sweep(M: int, grid_too: bool) -> None:
    """The lesson's tl.dot kernels (shipped settings, and at M = 1 with --old-grid a grid of settings), FP8 W8A8."""
    configs = [dict(qk.DECODE_CONFIG if M <= 16 else qk.PREFILL_CONFIG, split_k=None, label="shipped")]
    if grid_too and M == 1:
        for block_n, block_k, warps, split_k in list(itertools.product((32, 64, 128), (64, 128, 256), (4,), (None, 1))):
            configs.append(dict(BLOCK_M=16, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=3,
                                split_k=split_k, label=f"n{block_n}k{block_k}w{warps}s{split_k}"))
    for name, N, K in SHAPES:
        print(f"\nM={M} {name} (tl.dot kernels)", flush=True)
        try:
            w, x = make_weights(N, K, M)
            wb = w.to(torch.bfloat16)
            q8, s8 = qz.quantize_int8(w)
            q4, z4, sc4 = qz.quantize_int4(w, 128)
            sc4 = sc4.to(torch.bfloat16)
            ref8 = F.linear(x.float(), qz.dequantize_int8(q8, s8))
            ref4 = F.linear(x.float(), qz.dequantize_int4(q4, z4, sc4, 128))
        except Exception:
            traceback.print_exc()
            continue
        base, base_cold = bench(lambda: F.linear(x, wb)), bench_cold(lambda: F.linear(x, wb))
        ROWS.append(dict(M=M, shape=name, method="bf16", config="F.linear", us=round(base, 1),
                         us_cold=round(base_cold, 1)))
        print(f"  bf16  F.linear {base:7.1f} us  cold {base_cold:7.1f} us", flush=True)
        saved = dict(qk.DECODE_CONFIG), dict(qk.PREFILL_CONFIG)
        for method, call, ref, nbytes in (
                ("int8", lambda sk: qk.int8_matmul(x, q8, s8, split_k=sk), ref8, N * K),
                ("int4", lambda sk: qk.int4_matmul(x, q4, z4, sc4, 128, split_k=sk), ref4, N * K // 2)):
            for cfg in configs:
                settings = {k: cfg[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages")}
                qk.DECODE_CONFIG.update(settings)
                qk.PREFILL_CONFIG.update(settings)
                try:
                    record(M, name, method, "tl.dot " + cfg["label"], lambda: call(cfg["split_k"]), base, base_cold,
                           nbytes, ref)
                finally:
                    qk.DECODE_CONFIG.clear(); qk.DECODE_CONFIG.update(saved[0])
                    qk.PREFILL_CONFIG.clear(); qk.PREFILL_CONFIG.update(saved[1])
        if torch.cuda.get_device_capability() >= (8, 9):  # FP8 W8A8, shipped settings (activation quantization included)
            try:
                w8, s8inv = qz.quantize_fp8_block(w)
            except Exception:
                traceback.print_exc()
            else:
                record(M, name, "fp8", "W8A8 shipped", lambda: qk.fp8_block_matmul(x, w8, s8inv), base, base_cold, N * K)
        save()


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
        try:
            llm = build_engine(model_dir, quantization=method, dtype="bfloat16", max_num_seqs=8, max_model_len=1024,
                               async_scheduling=False)
            result = run_batch1_decode(llm, prompt_len=128, output_len=64)
            print(f"engine {method}: {result.output_tokens_per_second:.1f} tok/s; {json.dumps(result.engine)}",
                  flush=True)
            ROWS.append(dict(engine=preset, method=str(method), tok_s=round(result.output_tokens_per_second, 1)))
            save()
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
        except Exception:
            traceback.print_exc()


def main() -> None:
    global JSON_PATH
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    parser.add_argument("--engine", metavar="PRESET", help="a make-model preset (e.g. 8b) for the engine part")
    parser.add_argument("--no-sweep", action="store_true", help="skip the tl.dot kernels' part")
    parser.add_argument("--no-gemv", action="store_true", help="skip the GEMV part")
    parser.add_argument("--old-grid", action="store_true", help="also a grid of tl.dot settings at M = 1")
    parser.add_argument("--dense", action="store_true", help="only the bf16 GEMV of the dense linears against F.linear")
    args = parser.parse_args()
    JSON_PATH = args.json
    start = time.time()
    if args.dense:
        for M in (1, 4):
            dense_sweep(M)
        print("\ndense choices:", json.dumps(dg.dense_choices()), flush=True)
        save()
        print(f"\nsweep took {time.time() - start:.0f} s", flush=True)
        return
    if not args.no_gemv:
        gemv_sweep(1, all_candidates=True)
        gemv_sweep(4, all_candidates=False)
        print("\ntuning choices:", flush=True)
        for entry in qg.TUNING_LOG:
            print(f"  {entry['key']} -> {entry['choice']}  {entry['us']}", flush=True)
    if not args.no_sweep:
        for M in (1, 256):
            old_sweep(M, args.old_grid)
    save()
    print(f"\nsweep took {time.time() - start:.0f} s", flush=True)
    if args.engine:
        engine(args.engine)
        save()


if __name__ == "__main__":
    main()
