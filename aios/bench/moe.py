"""Lesson 20's GPU measurements: the fused MoE step against the per-expert loop, and the 30B-A3B engine.

    python -m aios.bench.moe --kernel            # fused_moe vs moe_loop on one 30B-A3B layer's experts
    python -m aios.bench.moe --headline          # the headline workload on the Qwen3-30B-A3B shape
    python -m aios.bench.moe --kernel --headline --out DIR   # both; figures also in DIR/moe.json

Kernel: one MoE layer of Qwen3-30B-A3B (128 experts, 8 per token, hidden 2048, experts 768
wide) in bfloat16, random router choices, for a decode-sized batch and prefill-sized ones;
each side timed with CUDA events (median of ``repeats`` after warm-up).
Headline: ``aios bench``'s workload (256 requests, prompts and outputs of 100-1024 tokens)
on random bf16 weights (``load_format="dummy"``; ~61 GB, one H200) with the engine's defaults.
``--preset tiny-moe --device cpu`` runs both on a CPU as a smoke test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

#: One Qwen3-30B-A3B MoE layer: (experts, per token, hidden, expert width).
LAYER_30B_A3B = (128, 8, 2048, 768)
KERNEL_TOKENS = (256, 2048, 8192)


def _time_ms(fn, device: str, repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds (CUDA events on a GPU)."""
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            times.append((time.perf_counter() - begin) * 1e3)
    return statistics.median(times)


def kernel_comparison(tokens: int, layer=LAYER_30B_A3B, dtype=torch.bfloat16, device: str = "cuda",
                      repeats: int = 20, seed: int = 0) -> dict:
    """fused_moe and moe_loop on the same random experts and routing; times and the speed-up."""
    from aios.layers.fused_moe import fused_moe, moe_loop, route_tokens

    num_experts, top_k, hidden, intermediate = layer
    gen = torch.Generator(device=device).manual_seed(seed)
    w13 = (torch.randn(num_experts, 2 * intermediate, hidden, generator=gen, device=device) / hidden**0.5).to(dtype)
    w2 = (torch.randn(num_experts, hidden, intermediate, generator=gen, device=device) / intermediate**0.5).to(dtype)
    x = torch.randn(tokens, hidden, generator=gen, device=device).to(dtype)
    weights, ids = route_tokens(torch.randn(tokens, num_experts, generator=gen, device=device), top_k, True)
    fused = lambda: fused_moe(x, w13, w2, weights, ids)  # noqa: E731
    loop = lambda: moe_loop(x, w13, w2, weights, ids)  # noqa: E731
    error = (fused().float() - loop().float()).abs().max().item()
    for fn in (fused, loop):
        fn()
    fused_ms = _time_ms(fused, device, repeats)
    loop_ms = _time_ms(loop, device, max(3, repeats // 4))
    return {"tokens": tokens, "experts": num_experts, "top_k": top_k, "hidden": hidden,
            "intermediate": intermediate, "dtype": str(dtype).removeprefix("torch."),
            "fused_ms": round(fused_ms, 3), "loop_ms": round(loop_ms, 3), "speedup": round(loop_ms / fused_ms, 2),
            "max_abs_difference": error}


def model_dir_for(preset: str, folder: Path) -> Path:
    """config.json and tokenizer of ``preset``, no weights (the engine fills random ones)."""
    from aios.fixtures import tokenizer
    from aios.fixtures.make import write_model_files
    from aios.fixtures.presets import TOKENIZER_SIZES, build_config

    config = build_config(preset)
    tok_json = tokenizer.tokenizer_json(TOKENIZER_SIZES[preset])
    ids = tokenizer.special_token_ids(tok_json)
    config.update(bos_token_id=ids[tokenizer.ENDOFTEXT], eos_token_id=ids[tokenizer.IM_END])
    write_model_files(folder, config, tok_json)
    return folder


def headline(preset: str = "30b-a3b", device: str = "cuda", workload: dict | None = None, **options) -> dict:
    """Offline throughput of the engine on ``preset`` with random weights (``aios bench``'s workload)."""
    from aios.bench.throughput import HEADLINE_WORKLOAD, build_engine, run_throughput

    workload = dict(workload or HEADLINE_WORKLOAD)
    with tempfile.TemporaryDirectory() as folder:
        model_dir = model_dir_for(preset, Path(folder))
        llm = build_engine(model_dir, device=device, **options)
        try:
            result = run_throughput(llm, workload["num_requests"], workload["prompt_len"], workload["output_len"],
                                    workload["seed"], use_tqdm=False)
        finally:
            getattr(llm, "shutdown", lambda: None)()
    print(result.summary())
    return {"preset": preset, **result.as_dict()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", action="store_true", help="fused_moe vs moe_loop on one 30B-A3B layer")
    parser.add_argument("--headline", action="store_true", help="the headline workload on the 30B-A3B shape")
    parser.add_argument("--preset", default="30b-a3b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None, help="folder for moe.json")
    args = parser.parse_args(argv)
    smoke = args.device == "cpu"
    figures = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"}
    if args.kernel:
        layer = (8, 2, 64, 32) if smoke else LAYER_30B_A3B
        dtype = torch.float32 if smoke else torch.bfloat16
        figures["kernel"] = []
        for tokens in (4, 16) if smoke else KERNEL_TOKENS:
            row = kernel_comparison(tokens, layer, dtype, args.device, repeats=3 if smoke else 20)
            print(json.dumps(row))
            figures["kernel"].append(row)
    if args.headline:
        workload = {"num_requests": 4, "prompt_len": (8, 16), "output_len": (4, 8), "seed": 0} if smoke else None
        preset = "tiny-moe" if smoke and args.preset == "30b-a3b" else args.preset
        figures["headline"] = headline(preset, args.device, workload)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "moe.json").write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
