"""Lesson 18 demo: INT8, INT4 (AWQ) and FP8 weights — their bits, their bytes, their cost in quality.

    python exercises/lesson18/run_lesson18.py               # with your aios/
    python exercises/lesson18/run_lesson18.py --reference   # with solutions/aios/
    python exercises/lesson18/run_lesson18.py --documents 24

Shows: one weight row through each format; the AWQ packing of the codes 0..7; the bytes each
method keeps for the trained model; KL divergence, top-1 agreement and perplexity of each
method against the float model on held-out text; one quantized linear layer through the
Triton kernels (interpreter on a CPU) and through plain torch; the engine generating
with each method that runs on this machine; and the float model with an FP8 KV cache.
"""

import argparse
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", action="store_true", help="import solutions/aios instead of your aios/")
    parser.add_argument("--model", type=Path, help="float checkpoint (default: the trained model, assets/aios-tiny-lm)")
    parser.add_argument("--documents", type=int, default=12, help="held-out fortunes for the quality table")
    return parser.parse_args()


def select_tree(reference: bool) -> None:
    """Put the chosen ``aios`` first on sys.path, before anything imports it."""
    sys.path.insert(0, str(REPO / "solutions" if reference else REPO))


def show_formats() -> None:
    import torch

    from aios.layers import quantization as qz

    torch.manual_seed(0)
    w = torch.randn(8, 128) * 0.05
    print("One weight row (first 6 of 128 values):", [round(v, 4) for v in w[0, :6].tolist()])
    q, s = qz.quantize_int8(w)
    print(f"  int8: codes {q[0, :6].tolist()}, scale {s[0].item():.5f} -> "
          f"{[round(v, 4) for v in qz.dequantize_int8(q, s)[0, :6].tolist()]}")
    qw, qzr, sc = qz.quantize_int4(w, 128)
    codes = qz.unpack_int4_awq(qw)[:6, 0].tolist()
    print(f"  int4: codes {codes}, zero {qz.unpack_int4_awq(qzr)[0, 0].item()}, scale {sc[0, 0].item():.5f} -> "
          f"{[round(v, 4) for v in qz.dequantize_int4(qw, qzr, sc, 128)[0, :6].tolist()]}")
    f, si = qz.quantize_fp8_block(w)
    print(f"  fp8:  e4m3 {[round(v, 1) for v in f[0, :6].float().tolist()]}, scale_inv {si[0, 0].item():.6f} -> "
          f"{[round(v, 4) for v in qz.dequantize_fp8_block(f, si)[0, :6].tolist()]}")
    packed = qz.pack_int4_awq(torch.arange(8, dtype=torch.int32).view(1, 8))
    print(f"\nAWQ packing of the codes 0..7 of one run of eight columns: 0x{packed.item() & 0xFFFFFFFF:08X} "
          f"(nibble k holds column {qz.AWQ_ORDER})")


def held_out(model_dir: Path, count: int) -> list[list[int]]:
    from tokenizers import Tokenizer

    from aios.fixtures.trained import plain_document, read_fortunes, split_fortunes

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    _, fortunes = split_fortunes(read_fortunes())
    return [tokenizer.encode(plain_document(f)).ids[:64] for f in fortunes[:count]]


def logits_of(model, documents):
    import torch

    with torch.no_grad():
        return [model.compute_logits(model(torch.tensor(ids), torch.arange(len(ids)))).float() for ids in documents]


def quality_table(model_dir: Path, count: int) -> None:
    import torch

    from aios.layers.quantization import weight_bytes
    from aios.utils.loader import load_qwen3

    documents = held_out(model_dir, count)
    base_model = load_qwen3(model_dir, torch.float32, fused_layers=True)
    base = logits_of(base_model, documents)
    print(f"\nQuality against the float32 model on {len(documents)} held-out fortunes (64 tokens each):")
    print(f"  {'method':<8} {'weights MiB':>11} {'KL nats/tok':>12} {'top-1':>7} {'perplexity':>11}")
    rows = [("float32", base_model, base)]
    for method in ("bf16", "int8", "fp8", "int4"):
        if method == "bf16":
            model = load_qwen3(model_dir, torch.bfloat16, fused_layers=True)
        else:
            model = load_qwen3(model_dir, torch.float32, fused_layers=True, quantization=method)
        rows.append((method, model, logits_of(model, documents)))
    for method, model, logits in rows:
        kl = agree = tokens = nll = 0.0
        for ref, cand, ids in zip(base, logits, documents):
            p, q = ref.log_softmax(-1), cand.log_softmax(-1)
            kl += (p.exp() * (p - q)).sum().item()
            agree += (ref.argmax(-1) == cand.argmax(-1)).sum().item()
            tokens += len(ids)
            nll -= q[:-1].gather(1, torch.tensor(ids[1:])[:, None]).sum().item()
        ppl = math.exp(nll / (tokens - len(documents)))
        print(f"  {method:<8} {weight_bytes(model) / 2**20:>11.2f} {kl / tokens:>12.4f} {agree / tokens:>7.3f} "
              f"{ppl:>11.1f}")
    print("  (the weights column counts every parameter; embeddings and norms stay float)")


def kernel_vs_torch() -> None:
    import torch

    from aios.layers import quantization as qz
    from aios.layers.linear import RowParallelLinear

    print("\nOne quantized 512 -> 256 layer, 4 tokens, Triton kernel vs dequantize-then-matmul:")
    w = torch.randn(256, 512) * 0.05
    x = torch.randn(4, 512)
    for method in ("int8", "int4"):
        outputs = {}
        for backend in ("triton", "torch"):
            layer = qz.QuantizedLinear.like(RowParallelLinear(512, 256), qz.QuantSpec(method), backend=backend)
            qz.load_quantized(layer, w)
            start = time.perf_counter()
            outputs[backend] = layer(x)
            outputs[backend + "_ms"] = (time.perf_counter() - start) * 1e3
        diff = (outputs["triton"] - outputs["torch"]).abs().max().item()
        print(f"  {method}: largest difference {diff:.1e}; triton {outputs['triton_ms']:.0f} ms, "
              f"torch {outputs['torch_ms']:.1f} ms (on a CPU the kernel runs in Triton's interpreter)")


def engines(model_dir: Path) -> None:
    import torch

    from aios import LLM, SamplingParams
    from aios.config import features_up_to

    methods = [None, "int8", "int4"] + (["fp8"] if torch.cuda.is_available()
                                         and torch.cuda.get_device_capability() >= (8, 9) else [])
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    print("\nThe engine with each method (greedy, 20 tokens):")
    for method in methods:
        options = {**features_up_to(15), "max_num_seqs": 4, "max_model_len": 256}
        if not torch.cuda.is_available():
            options.update(attention_backend="torch", num_kvcache_blocks=64)
        llm = LLM(str(model_dir), **options, quantization=method)
        start = time.perf_counter()
        out = llm.generate(["The secret of a happy life is"], params, use_tqdm=False)[0]
        print(f"  {str(method):<5} {time.perf_counter() - start:5.2f} s  {out['text']!r}")
        llm.shutdown()
    fp8_kv_cache(model_dir)


def fp8_kv_cache(model_dir: Path) -> None:
    """The float model with an FP8 KV cache (kv_cache_dtype="fp8"): cache bytes and the same greedy completion."""
    import torch

    from aios import LLM, SamplingParams
    from aios.config import features_up_to

    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    print("\nThe KV cache in the model's dtype and in FP8 (same number of blocks; greedy, 20 tokens):")
    for kv in ("auto", "fp8"):
        options = {**features_up_to(15), "max_num_seqs": 4, "max_model_len": 256, "num_kvcache_blocks": 64}
        if not torch.cuda.is_available():
            options.update(attention_backend="torch")
        llm = LLM(str(model_dir), **options, kv_cache_dtype=kv)
        cache = llm.model_runner.kv_cache
        out = llm.generate(["The secret of a happy life is"], params, use_tqdm=False)[0]
        print(f"  {kv:<5} {str(cache.k_cache.dtype).removeprefix('torch.'):<14} {cache.nbytes / 1024:7.0f} KiB  "
              f"{out['text']!r}")
        llm.shutdown()


def main() -> None:
    args = parse_args()
    select_tree(args.reference)
    from aios.fixtures import trained_model

    model_dir = Path(args.model or trained_model())
    show_formats()
    quality_table(model_dir, args.documents)
    kernel_vs_torch()
    engines(model_dir)


if __name__ == "__main__":
    main()
