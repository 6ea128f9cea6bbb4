"""Lesson 18: write a pre-quantized checkpoint (``python -m aios quantize SRC DST --method int4``).

The output is a Hugging Face-format folder the engine (and, for AWQ and FP8, other
engines) loads as it is: every linear layer of the decoder layers is replaced by its
quantized tensors, everything else (embeddings, norms, LM head) is copied unchanged, and
config.json gains a ``quantization_config``:

==========  ===============================================  ========================================
method      quantization_config                              tensors of one linear layer ``<name>``
==========  ===============================================  ========================================
``int4``    ``quant_method: "awq"``, bits 4, group_size,     ``<name>.qweight`` [in, out/8] int32,
            zero_point true, version "gemm"                  ``<name>.qzeros`` [in/g, out/8] int32,
                                                             ``<name>.scales`` [in/g, out] float16
``int8``    ``quant_method: "aios-int8"`` (this project's)   ``<name>.weight`` [out, in] int8,
                                                             ``<name>.weight_scale`` [out] float32
``fp8``     ``quant_method: "fp8"``, fmt e4m3,               ``<name>.weight`` [out, in] float8_e4m3fn,
            weight_block_size [128, 128], dynamic acts       ``<name>.weight_scale_inv`` [⌈out/128⌉, ⌈in/128⌉] float32
==========  ===============================================  ========================================

The INT4 and FP8 layouts are those of published AWQ and Qwen3-FP8 checkpoints.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from aios.layers.quantization import QuantSpec, quantize_fp8_block, quantize_int4, quantize_int8
from aios.utils.loader import checkpoint_files

#: The checkpoint tensors that are quantized: the seven projections of every decoder layer.
LINEAR_WEIGHT = re.compile(r"^model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$")


def quantized_tensors(name: str, weight: torch.Tensor, spec: QuantSpec) -> dict[str, torch.Tensor]:
    """The checkpoint tensors that replace the float ``<module>.weight`` [out, in] called ``name``."""
    module = name.removesuffix(".weight")
    if spec.method == "int4":
        qweight, qzeros, scales = quantize_int4(weight, spec.group_size)
        return {f"{module}.qweight": qweight, f"{module}.qzeros": qzeros, f"{module}.scales": scales}
    if spec.method == "int8":
        qweight, scale = quantize_int8(weight)
        return {f"{module}.weight": qweight, f"{module}.weight_scale": scale}
    quantized, scale_inv = quantize_fp8_block(weight, spec.block)
    return {f"{module}.weight": quantized, f"{module}.weight_scale_inv": scale_inv}


def quantize_checkpoint(src: str | Path, dst: str | Path, method: str, group_size: int = 128) -> Path:
    """Write the float checkpoint ``src`` quantized with ``method`` ("int4", "int8", "fp8") into ``dst``.

    Raises ValueError when ``src`` is already quantized or a layer's shape does not fit the format
    (INT4: ``group_size`` must divide every layer's input features).
    """
    src, dst = Path(src), Path(dst)
    config = json.loads((src / "config.json").read_text())
    if config.get("quantization_config"):
        raise ValueError(f"{src} is already quantized ({config['quantization_config'].get('quant_method')})")
    spec = QuantSpec(method, group_size=group_size)
    dst.mkdir(parents=True, exist_ok=True)
    for path in checkpoint_files(src):
        tensors = {}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                tensor = f.get_tensor(name)
                if LINEAR_WEIGHT.match(name):
                    try:
                        tensors.update(quantized_tensors(name, tensor, spec))
                    except ValueError as error:
                        raise ValueError(f"{name}: {error}") from None
                else:
                    tensors[name] = tensor
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(dst / path.name), metadata={"format": "pt"})
    for path in src.iterdir():
        if path.is_file() and path.suffix != ".safetensors" and path.name != "config.json" \
                and not path.name.endswith(".index.json"):
            shutil.copy2(path, dst / path.name)
    config["quantization_config"] = spec.checkpoint_config()
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return dst
