"""Compile lesson 18's decode GEMV kernels for an H100/H200 (sm_90) without a GPU and report their machine code.

    python scripts/gemv_sass.py [--loop] [--dense]

For every setting of ``quant_gemv.INT4_CANDIDATES`` / ``INT8_CANDIDATES`` and of the bf16 GEMV's
``dense_gemv.DENSE_CANDIDATES`` at 1, 2, 4 and 8 rows (and the sweeps' extras; --dense: the bf16 ones only):
registers per thread, spilled bytes, shared memory, and with --loop the instruction mix of the main
loop (the largest backward branch in the SASS), to be read against the weights one loop iteration
handles per thread. Triton ships ptxas, cuobjdump and nvdisasm, so this runs on any machine; the
kernels are compiled with every integer argument marked divisible by 16, as the 8B shapes are.
"""

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # compile, do not interpret (quant_kernels would set it without a GPU)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "solutions"))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler.compiler import ASTSource  # noqa: E402

from aios.layers import dense_gemv as dg  # noqa: E402
from aios.layers import quant_gemv as qg  # noqa: E402

TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
GROUP = 128


def compile_kernel(fn, signature: dict, constants: dict, cfg: qg.GemvConfig):
    attrs = {(i,): [["tt.divisibility", 16]] for i, kind in enumerate(signature.values()) if kind != "constexpr"}
    source = ASTSource(fn, signature, constants, attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))


def int4_kernel(cfg: qg.GemvConfig):
    names = ["x_ptr", "qweight_ptr", "qzeros_ptr", "scales_ptr", "out_ptr", "final_ptr", "counter_ptr", "splits", "N",
             "packed_n", "K", "k_per_split", "stride_xm", "stride_om", "stride_os"]
    kinds = ["*bf16", "*i32", "*i32", "*bf16", "*fp32", "*bf16", "*i32"] + ["i32"] * 8
    constants = {"BLOCK_W": cfg.block_n // 8, "BLOCK_K": min(cfg.block_k, GROUP), "GROUP": GROUP, "MAGIC": cfg.magic,
                 "WIDE_LOADS": cfg.wide_loads, "FUSED_SUM": cfg.fused_sum}
    signature = dict(zip(names, kinds)) | {name: "constexpr" for name in constants}
    weights = cfg.block_n * GROUP // (32 * cfg.num_warps)  # one loop iteration is one group
    return compile_kernel(qg._int4_gemv_kernel, signature, constants, cfg), weights


def int8_kernel(cfg: qg.GemvConfig):
    k_names = ["K_words", "words_per_split"] if cfg.magic else ["K", "k_per_split"]
    names = ["x_ptr", "w_ptr", "scale_ptr", "out_ptr", "final_ptr", "counter_ptr", "splits", "N", *k_names,
             "stride_xm", "stride_wn", "stride_om", "stride_os"]
    kinds = ["*bf16", "*i32" if cfg.magic else "*i8", "*fp32", "*fp32", "*bf16", "*i32"] + ["i32"] * 8
    if cfg.magic:
        fn, constants = qg._int8_gemv_words_kernel, {"BLOCK_N": cfg.block_n, "BLOCK_W": cfg.block_k // 4}
    else:
        fn, constants = qg._int8_gemv_kernel, {"BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k}
    constants["FUSED_SUM"] = cfg.fused_sum
    signature = dict(zip(names, kinds)) | {name: "constexpr" for name in constants}
    return compile_kernel(fn, signature, constants, cfg), cfg.block_n * cfg.block_k // (32 * cfg.num_warps)


def dense_kernel(cfg: qg.GemvConfig, rows: int = 1):
    """The bf16 GEMV of ``dense_gemv`` for ``rows`` input rows (N and K multiples of the tile: no masks)."""
    names = ["x_ptr", "w_ptr", "bias_ptr", "out_ptr", "final_ptr", "counter_ptr", "splits", "M", "N", "K",
             "k_per_split", "stride_xm", "stride_wn", "stride_om", "stride_os"]
    kinds = ["*bf16", "*bf16", "*bf16", "*fp32", "*bf16", "*i32"] + ["i32"] * 9
    deferred = rows * cfg.block_n * cfg.block_k <= dg.DEFERRED_REGISTERS * 32 * cfg.num_warps
    constants = {"ROWS": rows, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k, "DEFERRED": deferred,
                 "ACC_K": cfg.block_k if deferred else 1, "EVEN": True, "HAS_BIAS": False, "FUSED_SUM": cfg.fused_sum}
    signature = dict(zip(names, kinds)) | {name: "constexpr" for name in constants}
    return compile_kernel(dg._dense_gemv_kernel, signature, constants, cfg), cfg.block_n * cfg.block_k // (32 * cfg.num_warps)


def loop_mix(sass: str) -> collections.Counter:
    """Opcode counts of the largest loop: from a label to the furthest backward branch to it."""
    lines = sass.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^\.(L_x_\d+):", line.strip()))}
    best = (0, 0)
    for i, line in enumerate(lines):
        m = re.search(r"BRA\s+`?\(?\.(L_x_\d+)", line)
        if m and labels.get(m.group(1), i) < i and i - labels[m.group(1)] > best[1] - best[0]:
            best = (labels[m.group(1)], i)
    ops = collections.Counter()
    for line in lines[best[0]:best[1] + 1]:
        if m := re.match(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)", line):
            ops[m.group(1)] += 1
    return ops


def report(label: str, kernel, weights: int, loop: bool) -> None:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([TOOLS / "cuobjdump", "-res-usage", cubin.name], capture_output=True, text=True).stdout
        m = re.search(r"REG:(\d+).*?STACK:(\d+).*?SHARED:(\d+)", usage, re.S)
        regs, stack, shared = m.groups() if m else ("?", "?", "?")
        line = f"{label:34s} regs {regs:>3s}  spill/stack {stack:>4s} B  shared {shared:>5s} B"
        if loop:
            sass = subprocess.run([TOOLS / "nvdisasm", "-c", cubin.name], capture_output=True, text=True).stdout
            ops = loop_mix(sass)
            total = sum(ops.values())
            line += f"  loop {total} instr / {weights} weights = {total / max(weights, 1):.2f}  {dict(ops.most_common(8))}"
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", action="store_true", help="also the main loop's instruction mix")
    parser.add_argument("--dense", action="store_true", help="only the bf16 GEMV of dense_gemv (M = 1, 2, 4, 8)")
    args = parser.parse_args()
    print(f"triton {triton.__version__}, sm_90, group {GROUP}")
    dense = dg.DENSE_CANDIDATES + dg.DENSE_SWEEP_EXTRA
    kinds = [("int4", int4_kernel, qg.INT4_CANDIDATES + qg.INT4_SWEEP_EXTRA),
             ("int8", int8_kernel, qg.INT8_CANDIDATES + qg.INT8_SWEEP_EXTRA)]
    kinds += [(f"bf16 M={rows}", lambda cfg, rows=rows: dense_kernel(cfg, rows), dense) for rows in (1, 2, 4, 8)]
    if args.dense:
        kinds = kinds[2:]
    for kind, build, configs in kinds:
        for cfg in configs:
            try:
                kernel, weights = build(cfg)
            except Exception as exc:  # report and go on
                print(f"{kind} {cfg.label}: {type(exc).__name__}: {str(exc)[:300]}")
                continue
            report(f"{kind} {cfg.label}", kernel, weights, args.loop)


if __name__ == "__main__":
    main()
