"""Load a Hugging Face Qwen3 checkpoint straight from safetensors into our module.

Our parameter names match the checkpoint's, so loading is: open every
``*.safetensors`` file, find the parameter each tensor belongs to, copy it in.
Every checkpoint tensor must land somewhere and every parameter must be filled:
a missing or unexpected tensor is an error that names it.

Fused layers (lesson 10) break the one-to-one naming: the checkpoint's ``q_proj``,
``k_proj`` and ``v_proj`` all land in our ``qkv_proj``, each in its own block of rows.
The model's ``packed_modules_mapping`` says which checkpoint module goes to which
fused module and under which shard id, and each fused parameter's
``weight_loader(param, loaded_weight, shard_id)`` knows where that shard goes (and,
with tensor parallelism, which slice of it this rank keeps). ``load_packed_weights``
does that routing; ``load_weights`` stays the plain lesson-3 loader.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from aios.layers.linear import default_weight_loader
from aios.utils.hf_config import load_model_config


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors and the model's parameters do not line up."""


def checkpoint_files(model_dir: str | Path) -> list[Path]:
    """The checkpoint's safetensors files, sorted; a clear error when there are none."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"No *.safetensors files in {model_dir!s}: is this a Hugging Face checkpoint directory?")
    return files


def load_weights(model: nn.Module, model_dir: str | Path) -> None:
    """Copy every tensor of the checkpoint into ``model``'s parameter of the same name.

    Tied weights (``lm_head`` sharing ``embed_tokens``) are filled once, from the embedding.
    Raises CheckpointMismatchError naming any parameter left unfilled or tensor left unused.
    """
    # BEGIN SOLUTION lesson3
    # Hint: model.named_parameters() lists a tied weight once, under its first name.
    # Hint: safe_open(path, framework="pt", device="cpu") gives keys() and get_tensor(name).
    params = dict(model.named_parameters())
    tied = getattr(model.config, "tie_word_embeddings", False)
    filled, unused = set(), []
    for path in checkpoint_files(model_dir):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                if tied and name == "lm_head.weight":
                    continue
                param = params.get(name)
                if param is None:
                    unused.append(name)
                    continue
                load_tensor(param, f.get_tensor(name), name)
                filled.add(name)
    report_mismatch(sorted(set(params) - filled), unused)
    # END SOLUTION


def is_kv_scale_name(name: str) -> bool:
    """A per-layer KV-cache scale of an FP8-KV checkpoint (``model.layers.N.self_attn.k_scale`` / ``v_scale``)."""
    return name.endswith((".self_attn.k_scale", ".self_attn.v_scale"))


def checkpoint_slices(model_dir: str | Path) -> Iterator[tuple[str, object]]:
    """Yield ``(name, slice)`` for every tensor of the checkpoint, file by file.

    A slice (``safe_open(...).get_slice(name)``) reads nothing until indexed:
    ``slice[:]`` reads the whole tensor, ``slice[a:b]`` only rows a..b-1. Use each
    slice before asking for the next one (its file is closed after its last tensor).
    Per-layer KV-cache scales (``...self_attn.k_scale`` / ``v_scale``, lesson 18) are skipped: the FP8
    KV cache reads them (``aios.layers.fp8_kv_cache.read_kv_scales``), not the model.
    """
    for path in checkpoint_files(model_dir):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                if not is_kv_scale_name(name):
                    yield name, f.get_slice(name)


def checkpoint_plan(model: nn.Module) -> dict[str, tuple[str, object]]:
    """Where each checkpoint tensor the model expects goes: name -> (parameter name, shard id).

    Unfused parameters map from their own name with shard id None. A fused parameter
    appears once per piece, under the checkpoint's name for that piece, e.g.
    ``"model.layers.0.self_attn.k_proj.weight" -> ("model.layers.0.self_attn.qkv_proj.weight", "k")``.
    Uses ``model.packed_modules_mapping`` ({checkpoint module: (fused module, shard id)}).
    """
    # BEGIN SOLUTION lesson10
    # Hint: invert the mapping first: fused module -> [(checkpoint module, shard id), ...].
    # Hint: compare whole name components (split on "."): "q_proj" must not match inside another name.
    pieces: dict[str, list[tuple[str, object]]] = {}
    for checkpoint_module, (fused_module, shard_id) in model.packed_modules_mapping.items():
        pieces.setdefault(fused_module, []).append((checkpoint_module, shard_id))
    plan = {}
    for param_name, _ in model.named_parameters():
        *prefix, module, leaf = param_name.split(".")
        for checkpoint_module, shard_id in pieces.get(module, [(module, None)]):
            plan[".".join([*prefix, checkpoint_module, leaf])] = (param_name, shard_id)
    return plan
    # END SOLUTION


def load_packed_weights(model: nn.Module, model_dir: str | Path) -> None:
    """Lesson 10's loader: route every checkpoint tensor to its (possibly fused) parameter.

    Each tensor goes through its parameter's ``weight_loader(param, loaded_weight, shard_id)``
    (``default_weight_loader`` for parameters without one), as a safetensors slice so that a
    tensor-parallel rank reads only its part. Every expected tensor must be loaded exactly once.
    Raises CheckpointMismatchError naming missing, unexpected or repeated tensors, or one whose
    shape does not fit.
    """
    # BEGIN SOLUTION lesson10
    # Hint: checkpoint_plan(model) says where each tensor goes; checkpoint_slices(model_dir) yields them.
    # Hint: with tied embeddings a checkpoint's lm_head.weight has no place of its own: skip it.
    plan = checkpoint_plan(model)
    params = dict(model.named_parameters())
    tied = getattr(model.config, "tie_word_embeddings", False)
    loaded, unused = set(), []
    for name, tensor in checkpoint_slices(model_dir):
        if tied and name == "lm_head.weight":
            continue
        if name not in plan:
            unused.append(name)
            continue
        if name in loaded:
            raise CheckpointMismatchError(f"checkpoint tensor {name!r} appears more than once")
        param_name, shard_id = plan[name]
        param = params[param_name]
        weight_loader = getattr(param, "weight_loader", default_weight_loader)
        try:
            weight_loader(param, tensor, shard_id)
        except ValueError as error:
            raise CheckpointMismatchError(f"checkpoint tensor {name!r} {error}") from None
        loaded.add(name)
    report_mismatch(sorted(set(plan) - loaded), unused)
    # END SOLUTION


def load_tensor(param: nn.Parameter, tensor: torch.Tensor, name: str) -> None:
    """Copy ``tensor`` into ``param`` (converting dtype and device), checking the shape."""
    if param.shape != tensor.shape:
        raise CheckpointMismatchError(
            f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, the model expects {tuple(param.shape)}"
        )
    with torch.no_grad():
        param.copy_(tensor)


def report_mismatch(missing: list[str], unused: list[str]) -> None:
    """Raise a CheckpointMismatchError naming what is missing or extra (nothing happens when both are empty)."""
    problems = []
    if missing:
        problems.append(f"parameters with no tensor in the checkpoint: {', '.join(missing)}")
    if unused:
        problems.append(f"checkpoint tensors the model has no place for: {', '.join(unused)}")
    if problems:
        raise CheckpointMismatchError("; ".join(problems))


@contextmanager
def default_dtype_and_device(dtype: torch.dtype, device: str | torch.device):
    """Build modules directly in ``dtype`` on ``device`` (no float32 CPU copy first)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def fill_random_weights(model: nn.Module, seed: int = 0, std: float = 0.02) -> None:
    """Benchmark weights: normal(0, std) everywhere except norm scales (ones), generated on the model's device."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, std, generator=generator)


def load_qwen3(
    model_dir: str | Path, dtype: torch.dtype | None = None, device: str = "cpu", load_format: str = "safetensors",
    quantization: str | None = None, **model_options,
):
    """Build our Qwen3ForCausalLM for the checkpoint in ``model_dir`` and load its weights.

    dtype defaults to the checkpoint's; ``model_options`` go to the model's constructor
    (for example ``fuse_residual_norm=True`` or ``fused_layers=True``). Fused models load
    through ``load_packed_weights``, the others through ``load_weights``.
    ``load_format="dummy"`` skips the safetensors files and fills random weights
    instead. Quantization (lesson 18): a pre-quantized checkpoint (its config.json's
    ``quantization_config``) loads into quantized layers as it is; ``quantization="int8"``,
    ``"int4"`` or ``"fp8"`` on a float checkpoint quantizes the loaded weights.
    Returns the model in eval mode.
    """
    from aios.layers.quantization import quantize_model, replace_with_quantized, resolve_quantization
    from aios.models.registry import model_class

    config = load_model_config(model_dir)
    dtype = dtype or config.torch_dtype
    quant = resolve_quantization(model_dir, quantization)
    with default_dtype_and_device(dtype, device):
        model = model_class(config)(config, **model_options)
        if quant is not None and quant.pre_quantized:
            if load_format == "dummy":
                raise ValueError("load_format='dummy' needs a float checkpoint's config.json, not a pre-quantized one")
            replace_with_quantized(model, quant)
    if load_format == "dummy":
        fill_random_weights(model)
    elif hasattr(model, "load_checkpoint"):  # lesson 20: Qwen3-MoE's expert layouts
        model.load_checkpoint(model_dir)
    elif model.fused_layers:
        load_packed_weights(model, model_dir)
    else:
        load_weights(model, model_dir)
    if quant is not None and not quant.pre_quantized:
        quantize_model(model, quant)
    return model.eval()
