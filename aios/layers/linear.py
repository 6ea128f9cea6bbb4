"""Linear layers that fuse projections (lesson 10) and split across GPUs (lesson 14).

A linear layer computes ``y = x @ W.T`` with ``W`` stored ``[out_features, in_features]``,
as in ``nn.Linear`` and in the checkpoint. Two ideas share this file:

Fusion (lesson 10). Projections that read the same input can live in one matrix:
``q_proj``, ``k_proj`` and ``v_proj`` stacked row-wise become ``qkv_proj``;
``gate_proj`` and ``up_proj`` become ``gate_up_proj``. One big matmul replaces
three (or two) smaller ones. The checkpoint still stores the separate matrices,
so every parameter carries a ``weight_loader(param, loaded_weight, shard_id)``
that knows where in the fused matrix the piece named ``shard_id`` goes.

Tensor parallelism (lesson 14). With ``tp_size`` ranks each rank holds a slice:

* column parallel: a slice of the *output* features (rows of W); every rank reads
  the whole input and produces its own part of the output, no communication;
* row parallel: a slice of the *input* features (columns of W); every rank
  produces a partial sum of the whole output, and an all-reduce adds them up.

Every layer here works for ``tp_size == 1`` (the default: a single process),
where "this rank's slice" is simply everything.

``loaded_weight`` may be a tensor or a safetensors slice (``safe_open(...).get_slice(name)``):
a slice reads from disk only the part that is indexed, so a rank never reads the
rows or columns that belong to other ranks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aios.engine.distributed import all_reduce, get_tp_rank, get_tp_size


def divide(numerator: int, denominator: int) -> int:
    """``numerator // denominator``, insisting that it divides evenly."""
    if numerator % denominator:
        raise ValueError(f"{numerator} is not divisible by the tensor-parallel size {denominator}")
    return numerator // denominator


def tensor_shape(loaded) -> tuple[int, ...]:
    """Shape of a tensor or of a safetensors slice."""
    return tuple(loaded.shape) if isinstance(loaded, torch.Tensor) else tuple(loaded.get_shape())


def read_all(loaded) -> torch.Tensor:
    """The whole of a tensor or safetensors slice, as a tensor."""
    return loaded if isinstance(loaded, torch.Tensor) else loaded[:]


def shard_for_rank(loaded, dim: int, tp_rank: int, tp_size: int) -> torch.Tensor:
    """Rank ``tp_rank``'s equal share of ``loaded`` along ``dim``, as a tensor.

    loaded: a tensor or a safetensors slice; from a slice only that share is read.
    With ``tp_size == 1`` the share is the whole thing. The length along ``dim``
    must divide evenly by ``tp_size``.
    """
    if tp_size == 1:
        return read_all(loaded)
    # Hint: index with a tuple of slices: slice(None) everywhere except along dim.
    raise NotImplementedError("Lesson 14: implement shard_for_rank in aios/layers/linear.py — see exercises/lesson14/README.md, 'What to implement'")


def copy_into(destination: torch.Tensor, source: torch.Tensor) -> None:
    """Copy ``source`` into ``destination`` (a parameter or a view of one), checking the shape."""
    if destination.shape != source.shape:
        raise ValueError(f"has shape {tuple(source.shape)}, the model expects {tuple(destination.shape)}")
    with torch.no_grad():
        destination.copy_(source)


def default_weight_loader(param: nn.Parameter, loaded_weight, shard_id=None) -> None:
    """Load a parameter that is neither fused nor sharded: copy the whole tensor."""
    copy_into(param.data, read_all(loaded_weight))


#: Inputs of at most this many rows (decode at small batch) may take the GEMV of ``dense_gemv`` on a GPU.
GEMV_MAX_ROWS = 8


def dense_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: x [tokens, in] -> [tokens, out].

    Not part of the lessons: on a GPU, an input of at most ``GEMV_MAX_ROWS`` rows goes to
    ``dense_gemv.dense_linear`` (reference code), which picks, once per shape, whichever of F.linear
    and its bf16/fp16 GEMV kernel is faster, for the CUDA graphs of decode (``AIOS_DENSE_GEMV=0``:
    always F.linear).
    """
    if x.is_cuda and x.dim() == 2 and x.shape[0] <= GEMV_MAX_ROWS:
        from aios.layers import dense_gemv  # Triton, imported on first use on a GPU only

        return dense_gemv.dense_linear(x, weight, bias)
    return F.linear(x, weight, bias)


class LinearBase(nn.Module):
    """``y = x @ W.T (+ b)`` where W holds this rank's slice: ``[out_per_rank, in_per_rank]``.

    Subclasses decide which dimension is split (``out_per_rank`` or ``in_per_rank``)
    and how checkpoint tensors are copied in (``weight_loader``). ``tp_rank`` and
    ``tp_size`` default to this process's place in the tensor-parallel group; tests
    pass them explicitly to build every rank's layer in one process.
    """

    def __init__(self, in_per_rank: int, out_per_rank: int, bias: bool, tp_rank: int, tp_size: int):
        super().__init__()
        self.tp_rank = tp_rank
        self.tp_size = tp_size
        self.weight = nn.Parameter(torch.empty(out_per_rank, in_per_rank), requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        if bias:
            self.bias = nn.Parameter(torch.empty(out_per_rank), requires_grad=False)
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: nn.Parameter, loaded_weight, shard_id=None) -> None:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [tokens, in_per_rank] -> [tokens, out_per_rank]."""
        if self.tp_size == 1:
            return dense_linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        out_features, in_features = self.weight.shape
        return f"in_per_rank={in_features}, out_per_rank={out_features}, tp={self.tp_rank}/{self.tp_size}"


def _rank_and_size(tp_rank: int | None, tp_size: int | None) -> tuple[int, int]:
    return (get_tp_rank() if tp_rank is None else tp_rank, get_tp_size() if tp_size is None else tp_size)


class ReplicatedLinear(LinearBase):
    """Every rank holds the whole matrix (for layers too small to be worth splitting)."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False):
        super().__init__(input_size, output_size, bias, tp_rank=0, tp_size=1)

    def weight_loader(self, param: nn.Parameter, loaded_weight, shard_id=None) -> None:
        default_weight_loader(param, loaded_weight)


class ColumnParallelLinear(LinearBase):
    """Splits the output features: rank r holds rows ``[r * out / tp, (r + 1) * out / tp)`` of W.

    Input: the full ``[tokens, input_size]``; output: this rank's ``[tokens, output_size / tp]``.
    """

    def __init__(self, input_size: int, output_size: int, bias: bool = False,
                 tp_rank: int | None = None, tp_size: int | None = None):
        tp_rank, tp_size = _rank_and_size(tp_rank, tp_size)
        self.input_size, self.output_size = input_size, output_size
        super().__init__(input_size, divide(output_size, tp_size), bias, tp_rank, tp_size)

    def weight_loader(self, param: nn.Parameter, loaded_weight, shard_id=None) -> None:
        """Copy this rank's rows of the checkpoint tensor (weight or bias: both split along dim 0)."""
        copy_into(param.data, shard_for_rank(loaded_weight, 0, self.tp_rank, self.tp_size))


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections of one input, stacked in one matrix.

    For Qwen3's MLP, ``output_sizes = [intermediate, intermediate]`` holds ``[gate; up]``;
    the checkpoint's ``gate_proj`` is shard 0 and ``up_proj`` is shard 1. With tensor
    parallelism each rank stacks *its* rows of every projection: ``[gate_r; up_r]``.
    """

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False,
                 tp_rank: int | None = None, tp_size: int | None = None):
        self.output_sizes = list(output_sizes)
        super().__init__(input_size, sum(output_sizes), bias, tp_rank, tp_size)

    def weight_loader(self, param: nn.Parameter, loaded_weight, shard_id: int) -> None:
        """Copy checkpoint projection number ``shard_id`` into its block of rows of ``param``.

        param: [sum(output_sizes) / tp, ...]; loaded_weight: [output_sizes[shard_id], ...]
        (the whole projection: take this rank's rows with ``shard_for_rank``).
        """
        # Hint: sizes inside param are per rank: output_sizes[i] // tp_size rows for projection i.
        # Hint: param.data.narrow(0, offset, rows) is a view you can copy into.
        raise NotImplementedError("Lesson 10: implement MergedColumnParallelLinear.weight_loader in aios/layers/linear.py — see exercises/lesson10/README.md, 'What to implement'")


class QKVParallelLinear(ColumnParallelLinear):
    """The query, key and value projections in one matrix: rows ``[q; k; v]``.

    q has ``num_heads * head_dim`` rows, k and v ``num_kv_heads * head_dim`` each
    (grouped-query attention: fewer KV heads). With tensor parallelism each rank holds
    whole heads: ``num_heads / tp`` query heads and ``num_kv_heads / tp`` KV heads, stacked
    the same way. Shard ids are ``"q"``, ``"k"``, ``"v"``.
    """

    def __init__(self, hidden_size: int, head_dim: int, total_num_heads: int, total_num_kv_heads: int,
                 bias: bool = False, tp_rank: int | None = None, tp_size: int | None = None):
        tp_rank, tp_size = _rank_and_size(tp_rank, tp_size)
        self.head_dim = head_dim
        self.num_heads = divide(total_num_heads, tp_size)
        self.num_kv_heads = divide(total_num_kv_heads, tp_size)
        output_size = (total_num_heads + 2 * total_num_kv_heads) * head_dim
        super().__init__(hidden_size, output_size, bias, tp_rank, tp_size)

    @property
    def q_size(self) -> int:
        """Rows of this rank's query block."""
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Rows of this rank's key block (and of its value block)."""
        return self.num_kv_heads * self.head_dim

    def weight_loader(self, param: nn.Parameter, loaded_weight, shard_id: str) -> None:
        """Copy checkpoint ``q_proj`` / ``k_proj`` / ``v_proj`` (``shard_id`` "q", "k", "v") into its rows.

        param: [q_size + 2 * kv_size, ...] (this rank's); loaded_weight: the whole projection
        from the checkpoint.
        """
        # Hint: the blocks start at 0, q_size and q_size + kv_size.
        raise NotImplementedError("Lesson 10: implement QKVParallelLinear.weight_loader in aios/layers/linear.py — see exercises/lesson10/README.md, 'What to implement'")


class RowParallelLinear(LinearBase):
    """Splits the input features: rank r holds columns ``[r * in / tp, (r + 1) * in / tp)`` of W.

    Input: this rank's ``[tokens, input_size / tp]`` (what a column-parallel layer
    produced); output: the full ``[tokens, output_size]``, once the ranks' partial
    sums are added by an all-reduce. The bias is not split and is added once, after the sum.
    """

    def __init__(self, input_size: int, output_size: int, bias: bool = False,
                 tp_rank: int | None = None, tp_size: int | None = None):
        tp_rank, tp_size = _rank_and_size(tp_rank, tp_size)
        self.input_size, self.output_size = input_size, output_size
        super().__init__(divide(input_size, tp_size), output_size, bias, tp_rank, tp_size)

    def weight_loader(self, param: nn.Parameter, loaded_weight, shard_id=None) -> None:
        """The weight: this rank's columns. The bias: all of it."""
        if param is self.bias:
            default_weight_loader(param, loaded_weight)
        else:
            copy_into(param.data, shard_for_rank(loaded_weight, 1, self.tp_rank, self.tp_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [tokens, input_size / tp] -> [tokens, output_size], summed over the ranks."""
        if self.tp_size == 1:
            return dense_linear(x, self.weight, self.bias)
        # Hint: a bias added on every rank would be counted tp_size times by the sum.
        raise NotImplementedError("Lesson 14: implement RowParallelLinear.forward in aios/layers/linear.py — see exercises/lesson14/README.md, 'What to implement'")
