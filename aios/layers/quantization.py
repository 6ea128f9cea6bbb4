"""Lesson 18: weight quantization — INT8, INT4 (AWQ layout) and FP8 block-wise — and quantized linear layers.

Three formats, each with a quantize and a dequantize function (weights are ``[out, in]``
like ``nn.Linear``'s unless said otherwise):

* INT8, symmetric, one scale per output channel::

      qweight [out, in] int8 in -127..127,  scale [out] float32,  W ≈ qweight * scale[:, None]

* INT4, asymmetric, one scale and one zero point per group of ``group_size`` input
  features of each output channel, stored the way AWQ ("gemm" version) checkpoints
  store it, *transposed* (input features first) and packed eight 4-bit values per int32::

      qweight [in, out / 8] int32   the 4-bit codes q in 0..15
      qzeros  [in / group, out / 8] int32   the 4-bit zero points z in 0..15
      scales  [in / group, out] float16
      W.T[i, o] ≈ (q[i, o] - z[i // group, o]) * scales[i // group, o]

  Inside one int32, nibble ``k`` (bits ``4k .. 4k+3``) holds column ``AWQ_ORDER[k]`` of
  its run of eight output columns: the order is interleaved, 0 2 4 6 1 3 5 7, not 0..7.

* FP8 e4m3, one scale per 128 x 128 block, as the official Qwen3 FP8 checkpoints
  (``quant_method: "fp8"``, ``weight_block_size: [128, 128]``) store it::

      weight [out, in] float8_e4m3fn,  weight_scale_inv [ceil(out/128), ceil(in/128)] float32
      W[o, i] ≈ weight[o, i] * weight_scale_inv[o // 128, i // 128]

``QuantizedLinear`` is a linear layer whose weight lives in one of these formats. It
takes the place of lesson 10's fused layers (``QKVParallelLinear``, ``MergedColumnParallelLinear``,
``RowParallelLinear``) in a model: ``QuantizedLinear.like(layer, spec)`` copies the
layer's shape, tensor-parallel place and fused pieces, so the lesson-10 loader fills it
from a pre-quantized checkpoint through its ``weight_loader``; ``quantize_model`` turns
an already loaded float model into a quantized one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from aios.engine.distributed import all_reduce
from aios.layers.linear import LinearBase, QKVParallelLinear, MergedColumnParallelLinear, RowParallelLinear
from aios.layers.linear import copy_into, read_all, shard_for_rank

#: AWQ's packing order: nibble k of an int32 holds output column AWQ_ORDER[k] of its group of eight.
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
#: The inverse: column c of a group of eight sits in nibble AWQ_REVERSE_ORDER[c].
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)
INT8_MAX = 127
INT4_MAX = 15
FP8_MAX = 448.0  # largest finite float8_e4m3fn
FP8_BLOCK = 128
#: The methods ``LLM(..., quantization=...)`` accepts.
METHODS = ("int8", "int4", "fp8")
#: quant_method values in a checkpoint's config.json, and the method each is.
CHECKPOINT_METHODS = {"aios-int8": "int8", "awq": "int4", "fp8": "fp8"}


# ------------------------------------------------------------------ INT8, per output channel


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel INT8: ``weight`` [out, in] -> (qweight [out, in] int8, scale [out] float32).

    scale = max |W[o, :]| / 127, qweight = round(W / scale) in -127..127 (never -128, so the
    range is symmetric). A row of zeros gets scale 1. Error per element <= scale / 2.
    """
    # Hint: compute in float32; torch.round rounds to nearest (ties to even), a cast .to(torch.int8) truncates.
    raise NotImplementedError("Lesson 18: implement quantize_int8 in aios/layers/quantization.py — see exercises/lesson18/README.md, 'What to implement'")


def dequantize_int8(qweight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """qweight [out, in] int8, scale [out] -> W [out, in] in ``dtype`` (computed in float32)."""
    raise NotImplementedError("Lesson 18: implement dequantize_int8 in aios/layers/quantization.py — see exercises/lesson18/README.md, 'What to implement'")


# ------------------------------------------------------------------ INT4, AWQ layout


def pack_int4_awq(values: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes eight to an int32 in AWQ's order: [rows, cols] (0..15) -> [rows, cols / 8] int32.

    Nibble k (bits 4k..4k+3) of packed[:, j] holds values[:, 8 * j + AWQ_ORDER[k]].
    """
    # Hint: view the columns as [rows, cols / 8, 8]; shifting by 28 bits overflows int32, which is fine (bits are bits).
    raise NotImplementedError("Lesson 18: implement pack_int4_awq in aios/layers/quantization.py — see exercises/lesson18/README.md, 'What to implement'")


def unpack_int4_awq(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of ``pack_int4_awq``: [rows, cols / 8] int32 -> [rows, cols] int32 codes in 0..15."""
    # Hint: (packed >> shift) & 0xF; a right shift of a negative int32 drags the sign bit in, the mask removes it.
    raise NotImplementedError("Lesson 18: implement unpack_int4_awq in aios/layers/quantization.py — see exercises/lesson18/README.md, 'What to implement'")


def quantize_int4(weight: torch.Tensor, group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric INT4 with one scale and zero point per ``group_size`` input features, in AWQ's layout.

    weight: [out, in] with in % group_size == 0 and out % 8 == 0.
    Returns (qweight [in, out / 8] int32, qzeros [in / group, out / 8] int32, scales [in / group, out] float16).
    Each group's range [min(w, 0), max(w, 0)] is cut into 15 steps: scale = (max - min) / 15 (rounded to
    float16 first, the scale the checkpoint keeps), zero = round(-min / scale), q = clamp(round(w / scale) + zero, 0, 15).
    Error per element <= scale / 2 (plus float16 rounding of the scale).
    """
    out_features, in_features = weight.shape
    check_int4_shape(in_features, out_features, group_size)
    # Hint: work on W.T viewed as [in / group, group, out]: min and max over dim 1 give one value per (group, column).
    # Hint: including 0 in the range keeps the zero point inside 0..15 and makes 0.0 exact.
    raise NotImplementedError("Lesson 18: implement quantize_int4 in aios/layers/quantization.py — see exercises/lesson18/README.md, 'What to implement'")


def dequantize_int4(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """AWQ tensors -> W [out, in] in ``dtype`` (note: transposed back to nn.Linear's layout).

    qweight [in, out / 8], qzeros [in / group, out / 8], scales [in / group, out];
    W.T[i, o] = (q[i, o] - z[i // group, o]) * scales[i // group, o], computed in float32.
    """
    # Hint: repeat_interleave(group_size, dim=0) stretches a per-group row over its group's input rows.
    raise NotImplementedError("Lesson 18: implement dequantize_int4 in aios/layers/quantization.py — see exercises/lesson18/README.md, 'What to implement'")


def check_int4_shape(in_features: int, out_features: int, group_size: int) -> None:
    """Clear errors for shapes the AWQ layout cannot hold."""
    if group_size < 1 or in_features % group_size:
        raise ValueError(f"INT4 group size {group_size} does not divide the {in_features} input features "
                         f"(a group must not straddle two rows of groups); choose a group size that divides it")
    if out_features % 8:
        raise ValueError(f"INT4 packs 8 output features per int32; {out_features} is not a multiple of 8")


# ------------------------------------------------------------------ FP8 e4m3, 128 x 128 blocks


def quantize_fp8_block(weight: torch.Tensor, block: int = FP8_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-wise FP8: ``weight`` [out, in] -> (weight [out, in] float8_e4m3fn, weight_scale_inv [ceil(out/b), ceil(in/b)] float32).

    Each ``block`` x ``block`` tile (the last ones may be smaller) gets weight_scale_inv =
    max |tile| / 448, so the tile's largest value becomes 448, e4m3's largest. The name is
    the checkpoint's: it is the factor that *dequantizes*, W ≈ weight * weight_scale_inv.
    """
    # Hint: pad the matrix with zeros to whole blocks, view it as [out_blocks, b, in_blocks, b], take amax over dims 1 and 3.
    raise NotImplementedError("Lesson 18: implement quantize_fp8_block in aios/layers/quantization.py — see exercises/lesson18/README.md, 'What to implement'")


def dequantize_fp8_block(weight: torch.Tensor, weight_scale_inv: torch.Tensor, block: int = FP8_BLOCK,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """weight [out, in] float8_e4m3fn, weight_scale_inv [ceil(out/b), ceil(in/b)] -> W [out, in] in ``dtype``."""
    raise NotImplementedError("Lesson 18: implement dequantize_fp8_block in aios/layers/quantization.py — see exercises/lesson18/README.md, 'What to implement'")


def expand_blocks(per_block: torch.Tensor, block: int, rows: int, cols: int) -> torch.Tensor:
    """A [ceil(rows/b), ceil(cols/b)] table of per-block values stretched to [rows, cols]."""
    return per_block.repeat_interleave(block, dim=0)[:rows].repeat_interleave(block, dim=1)[:, :cols]


# ------------------------------------------------------------------ what to quantize, and how


@dataclass(frozen=True)
class QuantSpec:
    """How the linear layers of a model are quantized.

    method: "int8", "int4" or "fp8"; group_size: INT4's group along the input features;
    block: FP8's square block; pre_quantized: the checkpoint already holds the quantized
    tensors (else the float weights are quantized after loading).
    """

    method: str
    group_size: int = 128
    block: int = FP8_BLOCK
    pre_quantized: bool = False

    def checkpoint_config(self) -> dict:
        """The ``quantization_config`` a checkpoint in this format carries in its config.json."""
        if self.method == "int4":
            return {"quant_method": "awq", "bits": 4, "group_size": self.group_size, "zero_point": True,
                    "version": "gemm", "modules_to_not_convert": None}
        if self.method == "int8":
            return {"quant_method": "aios-int8", "bits": 8, "symmetric": True, "granularity": "per_output_channel"}
        return {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                "weight_block_size": [self.block, self.block]}


def read_quantization_config(model_dir: str | Path) -> QuantSpec | None:
    """The checkpoint's own quantization (its config.json ``quantization_config``), or None for a float checkpoint.

    Raises ValueError for formats the engine cannot read (say which, and what it reads).
    """
    path = Path(model_dir) / "config.json"
    raw = json.loads(path.read_text()) if path.is_file() else {}
    qc = raw.get("quantization_config")
    if not qc:
        return None
    kind = qc.get("quant_method")
    if kind not in CHECKPOINT_METHODS:
        raise ValueError(f"{path}: quantization_config.quant_method {kind!r} is not supported; "
                         f"the engine reads {', '.join(sorted(CHECKPOINT_METHODS))}")
    method = CHECKPOINT_METHODS[kind]
    if method == "int4":
        if qc.get("bits", 4) != 4 or not qc.get("zero_point", True) or str(qc.get("version", "gemm")).lower() != "gemm":
            raise ValueError(f"{path}: only 4-bit AWQ 'gemm' checkpoints with zero points are supported, got {qc}")
        return QuantSpec("int4", group_size=int(qc.get("group_size", 128)), pre_quantized=True)
    if method == "fp8":
        block = qc.get("weight_block_size")
        if not block or len(block) != 2 or block[0] != block[1]:
            raise ValueError(f"{path}: FP8 checkpoints need square weight_block_size (e.g. [128, 128]), got {block}")
        if qc.get("activation_scheme", "dynamic") != "dynamic":
            raise ValueError(f"{path}: only activation_scheme 'dynamic' FP8 checkpoints are supported")
        return QuantSpec("fp8", block=int(block[0]), pre_quantized=True)
    return QuantSpec("int8", pre_quantized=True)


def resolve_quantization(model_dir: str | Path, requested: str | None, group_size: int = 128) -> QuantSpec | None:
    """What the engine does for ``LLM(model_dir, quantization=requested)``.

    A pre-quantized checkpoint loads as it is (``requested`` may be None or its own method);
    a float checkpoint is quantized at load time when ``requested`` names a method.
    """
    if requested is not None and requested not in METHODS:
        raise ValueError(f"quantization must be None or one of {', '.join(METHODS)}, got {requested!r}")
    own = read_quantization_config(model_dir)
    if own is not None:
        if requested not in (None, own.method):
            raise ValueError(f"{model_dir} is already quantized ({own.method}); it cannot be loaded as {requested!r}. "
                             f"Pass quantization=None (or {own.method!r}), or quantize the float checkpoint instead")
        return own
    if requested is None:
        return None
    return QuantSpec(requested, group_size=group_size)


# ------------------------------------------------------------------ the quantized linear layer


def _set_loader(param: nn.Parameter, loader, out_dim: int | None, out_unit: int, in_dim: int | None) -> nn.Parameter:
    """Tag a parameter with its loader and with which of its dims index output / input features.

    out_unit: output features per element along out_dim (8 for packed INT4, the block for FP8 scales).
    """
    param.weight_loader = loader
    param.out_dim, param.out_unit, param.in_dim = out_dim, out_unit, in_dim
    return param


class QuantizedLinear(nn.Module):
    """``y = x @ dequantize(W).T (+ bias)`` with W stored quantized: ``[out_per_rank, in_per_rank]`` logically.

    spec: the format; shards: shard id -> (first output feature, output features) of each fused piece
    on this rank (``{None: (0, out_per_rank)}`` for an unfused layer); row_parallel: W is split along
    the input features (an all-reduce adds the ranks' partial outputs) instead of the output features.
    backend: "triton" (own kernels that dequantize inside the matmul — INT8/INT4 inputs of a few rows go
    to the GEMV kernels of ``quant_gemv`` —, and for FP8 the W8A8 kernel that
    quantizes the activations per token too; the default on a GPU) or "torch" (dequantize the whole
    weight, then F.linear; the default on the CPU).

    Parameters, by method (this rank's shapes; all named as in the checkpoint):
      int8: weight [out, in] int8, weight_scale [out] float32
      int4: qweight [in, out/8] int32, qzeros [in/g, out/8] int32, scales [in/g, out] float16
      fp8:  weight [out, in] float8_e4m3fn, weight_scale_inv [ceil(out/b), ceil(in/b)] float32
    """

    def __init__(self, spec: QuantSpec, in_per_rank: int, out_per_rank: int, shards: dict, row_parallel: bool = False,
                 bias: bool = False, tp_rank: int = 0, tp_size: int = 1, backend: str | None = None,
                 device: torch.device | str | None = None):
        super().__init__()
        self.spec, self.shards, self.row_parallel = spec, dict(shards), row_parallel
        self.in_per_rank, self.out_per_rank = in_per_rank, out_per_rank
        self.tp_rank, self.tp_size = tp_rank, tp_size
        self.method = spec.method
        device = torch.device(device) if device is not None else torch.get_default_device()
        self.backend = backend or ("triton" if device.type == "cuda" else "torch")
        self._check_shapes()
        empty = dict(device=device)
        if self.method == "int8":
            self.weight = _set_loader(nn.Parameter(torch.empty(out_per_rank, in_per_rank, dtype=torch.int8, **empty),
                                                   requires_grad=False), self.weight_loader, 0, 1, 1)
            self.weight_scale = _set_loader(nn.Parameter(torch.empty(out_per_rank, dtype=torch.float32, **empty),
                                                         requires_grad=False), self.weight_loader, 0, 1, None)
        elif self.method == "int4":
            g = spec.group_size
            self.qweight = _set_loader(nn.Parameter(torch.empty(in_per_rank, out_per_rank // 8, dtype=torch.int32,
                                                                **empty), requires_grad=False),
                                       self.weight_loader, 1, 8, 0)
            self.qzeros = _set_loader(nn.Parameter(torch.empty(in_per_rank // g, out_per_rank // 8, dtype=torch.int32,
                                                               **empty), requires_grad=False),
                                      self.weight_loader, 1, 8, 0)
            self.scales = _set_loader(nn.Parameter(torch.empty(in_per_rank // g, out_per_rank, dtype=torch.float16,
                                                               **empty), requires_grad=False),
                                      self.weight_loader, 1, 1, 0)
        else:
            b = spec.block
            self.weight = _set_loader(nn.Parameter(torch.empty(out_per_rank, in_per_rank, dtype=torch.float8_e4m3fn,
                                                               **empty), requires_grad=False),
                                      self.weight_loader, 0, 1, 1)
            self.weight_scale_inv = _set_loader(
                nn.Parameter(torch.empty(-(-out_per_rank // b), -(-in_per_rank // b), dtype=torch.float32, **empty),
                             requires_grad=False), self.weight_loader, 0, b, 1)
        if bias:
            self.bias = _set_loader(nn.Parameter(torch.empty(out_per_rank, **empty), requires_grad=False),
                                    self.weight_loader, 0, 1, None)
        else:
            self.register_parameter("bias", None)

    def _check_shapes(self) -> None:
        """Clear errors for layouts the format cannot hold (a group or block that a rank or a fused piece would split)."""
        where = f"(tensor-parallel rank {self.tp_rank} of {self.tp_size})" if self.tp_size > 1 else ""
        if self.method == "int4":
            if self.in_per_rank % self.spec.group_size:
                raise ValueError(f"INT4 group size {self.spec.group_size} does not divide the {self.in_per_rank} input "
                                 f"features of this layer {where}: a group would be split across ranks. Use fewer "
                                 f"tensor-parallel ranks or a smaller group size")
            unit = 8
        elif self.method == "fp8":
            # Pieces side by side, or a column-parallel rank's share, must start on a block row.
            unit = self.spec.block if len(self.shards) > 1 or (self.tp_size > 1 and not self.row_parallel) else 1
            if self.tp_size > 1 and self.row_parallel and self.in_per_rank % self.spec.block:
                raise ValueError(f"FP8 block {self.spec.block} does not divide the {self.in_per_rank} input features "
                                 f"of this rank {where}")
        else:
            unit = 1
        for shard_id, (offset, size) in self.shards.items():
            if offset % unit or size % unit:
                raise ValueError(f"{self.method}: the fused piece {shard_id!r} ({size} output features at {offset}) "
                                 f"does not start and end on a multiple of {unit} {where}")

    @classmethod
    def like(cls, layer: LinearBase, spec: QuantSpec, backend: str | None = None) -> "QuantizedLinear":
        """An empty quantized layer with ``layer``'s shape, tensor-parallel place and fused pieces."""
        out_per_rank, in_per_rank = layer.weight.shape
        tp = layer.tp_size
        if isinstance(layer, QKVParallelLinear):
            q, kv = layer.q_size, layer.kv_size
            shards = {"q": (0, q), "k": (q, kv), "v": (q + kv, kv)}
        elif isinstance(layer, MergedColumnParallelLinear):
            sizes = [size // tp for size in layer.output_sizes]
            shards = {i: (sum(sizes[:i]), size) for i, size in enumerate(sizes)}
        else:
            shards = {None: (0, out_per_rank)}
        return cls(spec, in_per_rank, out_per_rank, shards, row_parallel=isinstance(layer, RowParallelLinear),
                   bias=layer.bias is not None, tp_rank=layer.tp_rank, tp_size=tp, backend=backend,
                   device=layer.weight.device)

    def weight_loader(self, param: nn.Parameter, loaded_weight, shard_id=None) -> None:
        """Copy one checkpoint tensor (a fused piece ``shard_id``; a tensor or a safetensors slice) into ``param``.

        Column-parallel layers keep this rank's share of the piece's output features, row-parallel
        layers this rank's share of the input features; packed tensors count output features in
        units of ``param.out_unit``. The checkpoint's dtype must be the parameter's for integer and
        FP8 tensors (a float tensor is converted).
        """
        # Hint: param.out_dim says which dim counts output features, param.out_unit how many features one element holds.
        raise NotImplementedError("Lesson 18: implement QuantizedLinear.weight_loader in aios/layers/quantization.py — see exercises/lesson18/README.md, 'What to implement'")

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """This rank's W [out_per_rank, in_per_rank] in ``dtype``."""
        if self.method == "int8":
            return dequantize_int8(self.weight, self.weight_scale, dtype)
        if self.method == "int4":
            return dequantize_int4(self.qweight, self.qzeros, self.scales, self.spec.group_size, dtype)
        # Fused pieces start on block boundaries (checked in __init__), so the blocks of the whole matrix line up.
        return dequantize_fp8_block(self.weight, self.weight_scale_inv, self.spec.block, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [tokens, in_per_rank] -> [tokens, out_per_rank] (row parallel: summed over the ranks), in x's dtype."""
        y = self.matmul(x)
        if self.row_parallel and self.tp_size > 1:
            y = all_reduce(y)
        return y if self.bias is None else y + self.bias

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x @ W.T without the bias, by the chosen backend."""
        if self.backend == "triton" and self.method in ("int8", "int4"):
            # Decode-sized inputs take the GEMV kernels of quant_gemv, larger ones the lesson's tl.dot kernels.
            from aios.layers import quant_gemv

            flat = x.reshape(-1, x.shape[-1])
            if self.method == "int8":
                y = quant_gemv.int8_linear(flat, self.weight, self.weight_scale)
            else:
                y = quant_gemv.int4_linear(flat, self.qweight, self.qzeros, self.scales, self.spec.group_size)
            return y.reshape(*x.shape[:-1], self.out_per_rank)
        if self.backend == "triton" and self.method == "fp8":  # W8A8: activations quantized per token at run time
            # Large inputs may take cuBLAS's block-scaled FP8 matmul (fp8_scaled_mm, tuned on the first call), else Triton.
            from aios.layers import fp8_scaled_mm

            y = fp8_scaled_mm.fp8_linear(x.reshape(-1, x.shape[-1]), self.weight, self.weight_scale_inv, self.spec.block)
            return y.reshape(*x.shape[:-1], self.out_per_rank)
        return F.linear(x, self.dequantized_weight(x.dtype))

    def extra_repr(self) -> str:
        return (f"method={self.method}, in_per_rank={self.in_per_rank}, out_per_rank={self.out_per_rank}, "
                f"backend={self.backend}, tp={self.tp_rank}/{self.tp_size}")


def load_quantized(layer: QuantizedLinear, weight: torch.Tensor) -> None:
    """Quantize this rank's float ``weight`` [out_per_rank, in_per_rank] into ``layer``'s parameters."""
    spec = layer.spec
    if spec.method == "int8":
        qweight, scale = quantize_int8(weight)
        copy_into(layer.weight.data, qweight)
        copy_into(layer.weight_scale.data, scale)
    elif spec.method == "int4":
        qweight, qzeros, scales = quantize_int4(weight, spec.group_size)
        for param, value in ((layer.qweight, qweight), (layer.qzeros, qzeros), (layer.scales, scales)):
            copy_into(param.data, value)
    else:
        for offset, size in layer.shards.values():
            quantized, scale_inv = quantize_fp8_block(weight.narrow(0, offset, size), spec.block)
            copy_into(layer.weight.data.narrow(0, offset, size), quantized)
            rows = -(-size // spec.block)
            copy_into(layer.weight_scale_inv.data.narrow(0, offset // spec.block, rows), scale_inv)


def quantizable_layers(model: nn.Module) -> list[tuple[nn.Module, str, LinearBase]]:
    """(parent, attribute, layer) of every lesson-10 linear layer inside the decoder layers (not the embedding or LM head)."""
    found = []
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, LinearBase):
                found.append((module, name, child))
    return found


def replace_with_quantized(model: nn.Module, spec: QuantSpec, backend: str | None = None) -> None:
    """Swap every quantizable layer for an empty ``QuantizedLinear`` (before loading a pre-quantized checkpoint)."""
    require_fused(model)
    for parent, name, layer in quantizable_layers(model):
        setattr(parent, name, QuantizedLinear.like(layer, spec, backend))


def quantize_model(model: nn.Module, spec: QuantSpec, backend: str | None = None) -> nn.Module:
    """Quantize a loaded float model in place, layer by layer (each float weight is freed as soon as it is quantized)."""
    require_fused(model)
    for parent, name, layer in quantizable_layers(model):
        quantized = QuantizedLinear.like(layer, spec, backend)
        load_quantized(quantized, layer.weight.data)
        if layer.bias is not None:
            copy_into(quantized.bias.data, layer.bias.data)
        setattr(parent, name, quantized)
    if torch.cuda.is_available():
        # Give the float weights' memory back to the GPU, so that the KV cache sized after loading can use it.
        torch.cuda.empty_cache()
    return model


def require_fused(model: nn.Module) -> None:
    if not getattr(model, "fused_layers", False):
        raise ValueError("quantization needs the fused linear layers of lesson 10: pass fused_layers=True")


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of the model (what the weights take in memory)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def check_kv_cache_dtype(config) -> None:
    """kv_cache_dtype's checks (lesson 18's FP8 KV cache), imported only when the option is not "auto"."""
    if config.kv_cache_dtype != "auto":
        from aios.layers.fp8_kv_cache import check_kv_cache_dtype as check

        check(config)


def check_quantization_options(config) -> str | None:
    """The engine's quantization checks (``Config``); returns the method the engine will run (None: float).

    Raises ValueError for combinations that would fail or give wrong output: an unknown method, a
    pre-quantized checkpoint asked to load as another method, quantization without fused layers,
    INT4 with a tensor-parallel size that splits a group, FP8 weights or an FP8 KV cache without an
    FP8-capable GPU.
    """
    spec = resolve_quantization(config.model, config.quantization)
    on_gpu = str(config.device).startswith("cuda")
    fp8_gpu = on_gpu and torch.cuda.get_device_capability(torch.device(config.device)) >= (8, 9)
    check_kv_cache_dtype(config)
    if spec is None:
        return None
    if not config.fused_layers:
        raise ValueError(f"quantization ({spec.method}) needs the fused linear layers of lesson 10: "
                         "pass fused_layers=True")
    if spec.method == "fp8" and not fp8_gpu:
        raise ValueError(f"FP8 weights need a CUDA GPU with FP8 support (compute capability >= 8.9, e.g. an H100); "
                         f"this engine runs on {config.device}. Use quantization='int8' or 'int4' on this machine")
    tp = config.tensor_parallel_size
    if spec.method == "int4" and tp > 1:
        hf = config.hf_config
        for name, size in (("intermediate_size", hf.intermediate_size),
                           ("num_attention_heads * head_dim", hf.num_attention_heads * hf.head_dim)):
            if size % tp or (size // tp) % spec.group_size:
                raise ValueError(f"INT4 with tensor_parallel_size={tp}: each rank would hold {size / tp:g} of the "
                                 f"{size} input features ({name}) of a row-parallel layer, not a whole number of "
                                 f"groups of {spec.group_size}. Use fewer ranks or a smaller group size")
    return spec.method
