"""Qwen3-MoE (lesson 20): Qwen3 whose feed-forward blocks are Mixtures of Experts.

Everything but the MLP is Qwen3 (aios/models/qwen3.py): the same attention, norms, RoPE
and residual stream, so the classes here reuse those modules and their ``forward``s.
A decoder layer's MLP is a sparse MoE block unless the config says otherwise
(``is_moe_layer``: ``mlp_only_layers`` lists dense layers, and only every
``decoder_sparse_step``-th layer is sparse); dense layers keep Qwen3's MLP with
``intermediate_size``, experts have ``moe_intermediate_size``.

Parameters (checkpoint names; ``nn.Linear`` layout [out, in]):

    model.layers.{i}.mlp.gate.weight                       [E, H]   the router
    model.layers.{i}.mlp.experts.{e}.gate_proj.weight      [I, H]   published checkpoints,
    model.layers.{i}.mlp.experts.{e}.up_proj.weight        [I, H]   one tensor per expert
    model.layers.{i}.mlp.experts.{e}.down_proj.weight      [H, I]
    model.layers.{i}.mlp.experts.gate_up_proj              [E, 2I, H]  or stacked (transformers 5's
    model.layers.{i}.mlp.experts.down_proj                 [E, H, I]   in-memory layout)

Our module holds the stacked layout (``FusedMoE``); ``load_moe_weights`` routes either
checkpoint layout into it, the rest of the model through lesson 10's plan.
"""

from types import SimpleNamespace

import torch
from torch import nn

from aios.layers.fused_moe import FusedMoE, route_tokens
from aios.layers.linear import ReplicatedLinear
from aios.models.qwen3 import Qwen3DecoderLayer, Qwen3ForCausalLM, Qwen3MLP, Qwen3Model
from aios.utils.moe_config import check_moe_config


def is_moe_layer(config: SimpleNamespace, layer_idx: int) -> bool:
    """Whether layer ``layer_idx`` (0-based) has a sparse MoE block, as transformers decides it.

    Dense when the layer is in ``mlp_only_layers``, when there are no experts, or when
    ``layer_idx + 1`` is not a multiple of ``decoder_sparse_step`` (step 2: layers 1, 3, 5, ...).
    """
    # Hint: the step counts layers from 1: with decoder_sparse_step = 2 the first sparse layer is index 1.
    raise NotImplementedError("Lesson 20: implement is_moe_layer in aios/models/qwen3_moe.py — see exercises/lesson20/README.md, 'What to implement'")


class Qwen3MoeSparseBlock(nn.Module):
    """Router (``gate``, [E, H], replicated on every rank) and the stacked experts."""

    def __init__(self, config: SimpleNamespace, backend: str | None = None):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.renormalize = config.norm_topk_prob
        self.gate = ReplicatedLinear(config.hidden_size, config.num_experts, bias=False)
        self.experts = FusedMoE(config.num_experts, config.hidden_size, config.moe_intermediate_size, backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, H] -> [T, H]: route every token to its top-k experts and combine their outputs."""
        raise NotImplementedError("Lesson 20: implement Qwen3MoeSparseBlock.forward in aios/models/qwen3_moe.py — see exercises/lesson20/README.md, 'What to implement'")


class Qwen3MoeDecoderLayer(Qwen3DecoderLayer):
    """Qwen3's decoder layer (same ``forward``) with a sparse MoE block where ``is_moe_layer`` says so."""

    def make_mlp(self, config: SimpleNamespace, layer_idx: int, fused_layers: bool) -> nn.Module:
        if is_moe_layer(config, layer_idx):
            return Qwen3MoeSparseBlock(config)
        return Qwen3MLP(config, fused_layers)


class Qwen3MoeModel(Qwen3Model):
    """Embedding, the MoE decoder layers and the final norm (Qwen3Model's ``forward``)."""

    decoder_layer_class = Qwen3MoeDecoderLayer


class Qwen3MoeForCausalLM(Qwen3ForCausalLM):
    """Qwen3-MoE with its language-model head; ``forward`` and ``compute_logits`` are Qwen3's."""

    model_class = Qwen3MoeModel

    def __init__(self, config: SimpleNamespace, fuse_residual_norm: bool = False, fused_layers: bool = False):
        check_moe_config(config)
        super().__init__(config, fuse_residual_norm, fused_layers)

    def load_checkpoint(self, model_dir) -> None:
        """Load the safetensors of ``model_dir`` (either expert layout; see the module docstring)."""
        load_moe_weights(self, model_dir)


def expert_checkpoint_plan(model: nn.Module) -> dict[str, tuple[str, object]]:
    """Per-expert checkpoint names of every stacked expert parameter: name -> (parameter, shard id).

    ``model.layers.3.mlp.experts.5.up_proj.weight -> ("model.layers.3.mlp.experts.gate_up_proj", (5, "up"))``.
    """
    plan = {}
    for name, module in model.named_modules():
        if not isinstance(module, FusedMoE):
            continue
        for expert in range(module.num_experts):
            for which, param in (("gate", "gate_up_proj"), ("up", "gate_up_proj"), ("down", "down_proj")):
                plan[f"{name}.{expert}.{which}_proj.weight"] = (f"{name}.{param}", (expert, which))
    return plan


def load_moe_weights(model: nn.Module, model_dir, plan: dict | None = None, owns=None) -> None:
    """Load a Qwen3-MoE checkpoint: lesson 10's plan for the rest, either expert layout for the experts.

    Every stacked expert parameter must be filled completely by one layout (all per-expert
    tensors, or the one stacked tensor); anything else is a CheckpointMismatchError.
    A pipeline stage (lesson 21) passes its own ``plan`` and ``owns(name)``, which skips the
    checkpoint tensors of other stages.
    """
    from aios.layers.linear import default_weight_loader
    from aios.utils.loader import CheckpointMismatchError, checkpoint_plan, checkpoint_slices, report_mismatch

    stacked = {name for name, module in model.named_modules() if isinstance(module, FusedMoE)}
    if plan is None:
        plan = checkpoint_plan(model) if model.fused_layers else {n: (n, None) for n, _ in model.named_parameters()}
    per_expert = expert_checkpoint_plan(model)
    params = dict(model.named_parameters())
    tied = getattr(model.config, "tie_word_embeddings", False)
    loaded, unused = set(), []
    for name, tensor in checkpoint_slices(model_dir):
        if (tied and name == "lm_head.weight") or (owns is not None and not owns(name)):
            continue
        target = plan.get(name) or per_expert.get(name)
        if target is None:
            unused.append(name)
            continue
        if name in loaded:
            raise CheckpointMismatchError(f"checkpoint tensor {name!r} appears more than once")
        param_name, shard_id = target
        param = params[param_name]
        try:
            getattr(param, "weight_loader", default_weight_loader)(param, tensor, shard_id)
        except ValueError as error:
            raise CheckpointMismatchError(f"checkpoint tensor {name!r} {error}") from None
        loaded.add(name)
    missing = []
    for name in sorted(plan):
        if name in loaded or name.rsplit(".", 1)[0] in stacked:
            continue
        missing.append(name)
    for module_name in sorted(stacked):
        for param in ("gate_up_proj", "down_proj"):
            whole = f"{module_name}.{param}"
            pieces = [n for n, (p, _) in per_expert.items() if p == whole]
            got = [n for n in pieces if n in loaded]
            if whole in loaded and got:
                raise CheckpointMismatchError(f"{whole!r} comes both stacked and per expert in the checkpoint")
            if whole not in loaded and len(got) < len(pieces):
                missing.extend(sorted(set(pieces) - set(got)) if got else [whole])
    report_mismatch(missing, unused)
