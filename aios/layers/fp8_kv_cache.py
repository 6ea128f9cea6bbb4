"""Lesson 18: the FP8 KV cache — keys and values stored in one byte each (float8 e4m3), one scale per layer.

``LLM(dir, kv_cache_dtype="fp8")`` allocates the paged cache (lesson 6's layout,
[layers, num_blocks, block_size, kv_heads, head_dim]) as ``torch.float8_e4m3fn``: half the
bytes of bfloat16, so twice the tokens fit in the same memory and decode attention reads
half as much. Each layer has a scale for K and one for V (``k_scales[layer]``, ``v_scales[layer]``):

    store:  cache = e4m3(clamp(x / scale, -448, 448))     (round to nearest even; 448 is e4m3's largest)
    load:   x ~= float32(cache) * scale

The scales are 1.0 (K and V of Qwen3 are O(1)-O(10) after QK-norm and RoPE, well inside
e4m3's range) unless the checkpoint ships them as ``model.layers.N.self_attn.k_scale`` /
``v_scale`` (vLLM-style FP8 checkpoints). They are fixed when the engine starts, so captured
CUDA graphs (lesson 11) stay valid. A per-tensor scale never enters the attention kernels:

    q . (k8 * s_k)  = (q . k8) * s_k      -> attend with softmax scale ``scale * s_k``
    sum p (v8 * s_v) = s_v * sum p v8     -> multiply the output by ``s_v``

so lessons 7 and 9 attend over an FP8 cache as they are; lesson 9's kernels widen each loaded
tile to q's dtype. Stores: a Triton kernel quantizes while it writes on a GPU; on the CPU torch
does it (Triton's interpreter rounds float32 -> e4m3 wrongly across powers of two: 31.7 -> 16).
"""

import os
import re
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from aios.layers.paged_attention import paged_attention, store_kvcache  # noqa: E402

FP8_KV_DTYPE = torch.float8_e4m3fn
#: e4m3's largest finite value; a stored value is clamped to +-FP8_MAX (saturation, never NaN).
FP8_MAX = 448.0
#: The values ``kv_cache_dtype`` takes.
KV_CACHE_DTYPES = ("auto", "fp8")
#: Where the README explains it, for the errors.
KV_README = "see exercises/lesson18/README.md, 'The FP8 KV cache'"
#: Checkpoint tensors holding the per-layer scales (vLLM-style): model.layers.N.self_attn.k_scale / v_scale.
KV_SCALE_NAME = re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn\.([kv])_scale$")


# ---------------------------------------------------------------------------- quantize / dequantize


def quantize_kv(x: torch.Tensor, scale: float) -> torch.Tensor:
    """K or V rows as they are stored: x / scale, clamped to +-FP8_MAX, rounded to e4m3.

    x: [tokens, kv_heads, head_dim] in any float dtype; scale: a positive float.
    Returns the same shape in float8_e4m3fn.
    """
    # Hint: divide in float32, clamp to +-FP8_MAX (e4m3 has no infinity: saturate explicitly), then cast.
    raise NotImplementedError("Lesson 18: implement quantize_kv in aios/layers/fp8_kv_cache.py — see exercises/lesson18/README.md, 'What to implement'")


def dequantize_kv(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Stored e4m3 rows back to float32: x * scale. x: [..., head_dim] float8_e4m3fn -> float32, same shape."""
    raise NotImplementedError("Lesson 18: implement dequantize_kv in aios/layers/fp8_kv_cache.py — see exercises/lesson18/README.md, 'What to implement'")


# ---------------------------------------------------------------------------- the quantizing store


@triton.jit
def _store_kvcache_fp8_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
    key_stride, value_stride, row_size, k_scale, v_scale,
    FP8_LIMIT: tl.constexpr, BLOCK: tl.constexpr,
):
    """Program t: token t's K and V rows ([kv_heads * head_dim] values), divided by the layer's scale,
    clamped to +-FP8_LIMIT and rounded to e4m3, into its slot (slot -1: padding, nothing written)."""
    # Hint: lesson 9's store kernel, with the arithmetic in float32 between the load and the store.
    raise NotImplementedError("Lesson 18: implement _store_kvcache_fp8_kernel in aios/layers/fp8_kv_cache.py — see exercises/lesson18/README.md, 'What to implement'")


def store_kvcache_fp8(
    key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    slot_mapping: torch.Tensor, k_scale: float, v_scale: float,
) -> None:
    """Quantize each token's K and V (``quantize_kv``) into its slot of one layer's FP8 cache, in place.

    key, value: [tokens, kv_heads, head_dim] (bf16/fp16/fp32); k_cache, v_cache: [num_blocks, block_size,
    kv_heads, head_dim] float8_e4m3fn, contiguous; slot_mapping: [tokens] int64, -1 for padding.
    On a GPU one Triton program per token; elsewhere torch quantizes and lesson 6's store writes.
    """
    # Hint: on the CPU, quantize with quantize_kv and hand the e4m3 rows to lesson 6's store_kvcache.
    raise NotImplementedError("Lesson 18: implement store_kvcache_fp8 in aios/layers/fp8_kv_cache.py — see exercises/lesson18/README.md, 'What to implement'")


def _rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    """x with each token's [heads, head_dim] values contiguous (the token stride may be anything)."""
    if x.stride(-1) == 1 and x.stride(-2) == x.shape[-1]:
        return x
    return x.contiguous()


# ---------------------------------------------------------------------------- attention over the FP8 cache


def attend_fp8(cache, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, context,
               scale: float) -> torch.Tensor:
    """``PagedKVCache.attend`` for an FP8 cache: store this step's K/V quantized, attend over the cache.

    q: [tokens, q_heads, head_dim]; k, v: [tokens, kv_heads, head_dim]; returns [tokens, q_heads, head_dim]
    in q's dtype. ``cache.k_scales[layer_idx]`` / ``cache.v_scales[layer_idx]`` are the layer's scales;
    ``cache.backend`` picks lesson 7's attention ("torch") or lesson 9's kernels ("triton").
    """
    # Hint: scores see k = k8 * s_k: attend with scale * s_k; the output mixes v = v8 * s_v: multiply it by s_v.
    raise NotImplementedError("Lesson 18: implement attend_fp8 in aios/layers/fp8_kv_cache.py — see exercises/lesson18/README.md, 'What to implement'")


# ---------------------------------------------------------------------------- options and checkpoint scales


def kv_cache_storage_dtype(kv_cache_dtype: str, model_dtype: torch.dtype) -> torch.dtype:
    """The cache's element type: float8_e4m3fn for "fp8", the model's dtype for "auto"."""
    return FP8_KV_DTYPE if kv_cache_dtype == "fp8" else model_dtype


def check_kv_cache_dtype(config) -> None:
    """Raise a ValueError for a kv_cache_dtype the engine cannot run (``Config`` calls it).

    "fp8" runs on the CPU (torch emulates e4m3) and on CUDA GPUs with FP8 (compute capability
    >= 8.9); not with pipeline parallelism (a stage's cache holds only its own layers' scales).
    """
    value = config.kv_cache_dtype
    if value not in KV_CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype must be 'auto' or 'fp8', got {value!r} ({KV_README})")
    if value != "fp8":
        return
    device = str(config.device)
    if device.startswith("cuda") and torch.cuda.get_device_capability(torch.device(device)) < (8, 9):
        name = torch.cuda.get_device_name(torch.device(device))
        raise ValueError(f"kv_cache_dtype='fp8' needs a CUDA GPU with FP8 support (compute capability >= 8.9, "
                         f"e.g. an H100); {name} has none. Use kv_cache_dtype='auto' ({KV_README})")
    if getattr(config, "pipeline_parallel_size", 1) > 1:
        raise ValueError(f"kv_cache_dtype='fp8' does not run with pipeline parallelism yet; use "
                         f"kv_cache_dtype='auto' or pipeline_parallel_size=1 ({KV_README})")


def read_kv_scales(model_dir: str | Path, num_layers: int) -> tuple[list[float], list[float]]:
    """Per-layer (k_scales, v_scales) from the checkpoint's ``model.layers.N.self_attn.k_scale`` / ``v_scale``
    tensors (one value each); 1.0 for a layer without them. A scale that is not a finite positive number
    is a ValueError."""
    from safetensors import safe_open

    scales = {"k": [1.0] * num_layers, "v": [1.0] * num_layers}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                match = KV_SCALE_NAME.search(name)
                if match is None:
                    continue
                layer, which = int(match.group(1)), match.group(2)
                tensor = f.get_tensor(name).float()
                value = float(tensor.reshape(-1)[0]) if tensor.numel() == 1 else float("nan")
                if not (layer < num_layers and value > 0 and value != float("inf")):
                    raise ValueError(f"checkpoint tensor {name!r} is not a positive scale of a layer < {num_layers} "
                                     f"(shape {tuple(tensor.shape)}) ({KV_README})")
                scales[which][layer] = value
    return scales["k"], scales["v"]
