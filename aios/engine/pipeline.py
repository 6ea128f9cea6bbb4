"""Pipeline parallelism (lesson 21): the decoder layers cut into stages, one group of ranks per stage.

```
 world rank = pp_rank * tp_size + tp_rank          (TP=2 x PP=2: 4 ranks)

   stage 0 (layers 0 .. k-1)            stage 1 (layers k .. L-1)
   ┌──────────────────────────┐         ┌──────────────────────────┐
   │ rank 0 (tp 0) ◄─all-red─►│ hidden, │ rank 2 (tp 0) ◄─all-red─►│
   │ rank 1 (tp 1)            │residual │ rank 3 (tp 1)            │
   │ embedding + its layers   │ ──────► │ its layers + norm + head │
   └──────────────────────────┘ send/recv└──────────────────────────┘
                                 (tp r sends to tp r of the next stage)
```

* ``partition_layers`` says which layers each stage holds (contiguous, the remainder
  on the first stages);
* ``RankLayout`` is one rank's place in the grid: its stage, its TP rank, the world
  ranks it exchanges activations with;
* ``Qwen3Stage`` is the part of Qwen3 one stage runs: the embedding on the first stage,
  the final norm and the LM head on the last, and only this stage's decoder layers in
  between (the others are empty placeholders, so parameter names stay the checkpoint's);
* ``send_activations`` / ``recv_activations`` move a micro-batch's hidden states and
  residual stream to the next stage; the receiver allocates its buffers from the step's
  metadata (token count), the model's width and dtype, so no tensor is ever pickled.

The runner that drives all this (control messages, micro-batches, sampling on the last
stage, launching) is in ``aios/engine/pp_runner.py``. The README of lesson 21 explains the
remainder rule and the rank layout ("Cutting the model into stages", "Ranks and groups").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

#: Where the errors about pipeline options point.
PP_README = "see exercises/lesson21/README.md"


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: decoder layers ``[start, end)`` of ``num_layers``, stage ``index`` of ``size``."""

    index: int
    size: int
    start: int
    end: int

    @property
    def num_layers(self) -> int:
        return self.end - self.start

    @property
    def is_first(self) -> bool:
        return self.index == 0

    @property
    def is_last(self) -> bool:
        return self.index == self.size - 1


def partition_layers(num_layers: int, pp_size: int) -> list[tuple[int, int]]:
    """Split layers ``0 .. num_layers-1`` into ``pp_size`` contiguous ``(start, end)`` ranges, in order.

    Every stage gets ``num_layers // pp_size`` layers; the remainder ``num_layers % pp_size``
    goes one layer each to the *first* stages (the last stage already carries the LM head).
    Example: 10 layers on 4 stages -> [(0, 3), (3, 6), (6, 8), (8, 10)].
    Raises ValueError when ``pp_size`` is below 1 or above ``num_layers`` (a stage would be empty).
    """
    if pp_size < 1 or pp_size > num_layers:
        raise ValueError(
            f"pipeline_parallel_size must be between 1 and the number of decoder layers ({num_layers}), "
            f"got {pp_size}: every stage needs at least one layer ({PP_README}, 'Cutting the model into stages')"
        )
    # Hint: stage s starts where stage s-1 ended; the first (num_layers % pp_size) stages are one layer longer.
    raise NotImplementedError("Lesson 21: implement partition_layers in aios/engine/pipeline.py — see exercises/lesson21/README.md, 'What to implement'")


@dataclass(frozen=True)
class RankLayout:
    """Where one process sits in the TP x PP grid.

    world rank = pp_rank * tp_size + tp_rank: the ranks of a stage are neighbours (one
    machine with ``torchrun --nproc-per-node tp_size``), stages follow each other.
    """

    world_rank: int
    tp_size: int
    pp_size: int
    num_layers: int

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size

    @property
    def pp_rank(self) -> int:
        return self.world_rank // self.tp_size

    @property
    def tp_rank(self) -> int:
        return self.world_rank % self.tp_size

    @property
    def stage(self) -> Stage:
        start, end = partition_layers(self.num_layers, self.pp_size)[self.pp_rank]
        return Stage(self.pp_rank, self.pp_size, start, end)

    def tp_group_ranks(self, pp_rank: int) -> list[int]:
        """World ranks of stage ``pp_rank``'s tensor-parallel group, in TP-rank order."""
        return [pp_rank * self.tp_size + tp for tp in range(self.tp_size)]

    @property
    def prev_rank(self) -> int | None:
        """World rank this rank receives activations from (same TP rank, previous stage); None on stage 0."""
        raise NotImplementedError("Lesson 21: implement RankLayout.prev_rank in aios/engine/pipeline.py — see exercises/lesson21/README.md, 'What to implement'")

    @property
    def next_rank(self) -> int | None:
        """World rank this rank sends activations to (same TP rank, next stage); None on the last stage."""
        raise NotImplementedError("Lesson 21: implement RankLayout.next_rank in aios/engine/pipeline.py — see exercises/lesson21/README.md, 'What to implement'")

    @property
    def sampler_rank(self) -> int:
        """World rank that samples: TP rank 0 of the last stage (it holds the gathered logits)."""
        return (self.pp_size - 1) * self.tp_size


def check_parallel_layout(num_layers: int, tp_size: int, pp_size: int, world_size: int | None = None) -> None:
    """Raise ValueError for a grid that cannot work: pp_size outside [1, num_layers], or tp*pp != world size."""
    if tp_size < 1 or pp_size < 1:
        raise ValueError(f"tensor_parallel_size ({tp_size}) and pipeline_parallel_size ({pp_size}) must be >= 1 "
                         f"({PP_README}, 'Ranks and groups')")
    partition_layers(num_layers, pp_size)
    if world_size is not None and tp_size * pp_size != world_size:
        raise ValueError(
            f"tensor_parallel_size ({tp_size}) x pipeline_parallel_size ({pp_size}) = {tp_size * pp_size} ranks, "
            f"but the launcher started {world_size} (torchrun's --nnodes x --nproc-per-node must equal tp x pp; "
            f"{PP_README}, 'Launching across machines')"
        )


# ---------------------------------------------------------------------------- the stage's model


class Qwen3Stage(nn.Module):
    """The part of Qwen3 (or Qwen3-MoE) one pipeline stage runs (fused, tensor-parallel layers of lesson 10/14).

    Parameter names are the full model's (``model.layers.{i}...`` with the global ``i``), so the
    checkpoint loads as it is; layers of other stages are parameter-free placeholders. The layers
    are the architecture's own (``stage_layer_class``): each is built with its *global* index
    ``i``, which the config's per-layer fields refer to (Qwen3-MoE's ``mlp_only_layers`` and
    ``decoder_sparse_step`` say which layers have experts), while its attention indexes this
    stage's KV cache with the *local* index ``i - stage.start``.
    """

    def __init__(self, config, stage: Stage):
        super().__init__()
        from aios.layers.embed_head import ParallelLMHead, VocabParallelEmbedding
        from aios.layers.layernorm import RMSNorm
        from aios.models.qwen3 import make_rotary_embedding

        causal_lm = stage_model_class(config)
        self.packed_modules_mapping = causal_lm.packed_modules_mapping
        self.config = config
        self.fused_layers = True
        self.stage = stage
        self.model = nn.Module()
        if stage.is_first:
            self.model.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        rotary_emb = make_rotary_embedding(config)
        layer_class = causal_lm.model_class.decoder_layer_class
        self.model.layers = nn.ModuleList(
            layer_class(config, i, True, True, rotary_emb, cache_idx=i - stage.start) if stage.start <= i < stage.end
            else nn.Identity()
            for i in range(config.num_hidden_layers)
        )
        if stage.is_last:
            self.model.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size)
            if config.tie_word_embeddings and stage.is_first:
                self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self, positions: torch.Tensor, input_ids: torch.Tensor | None = None,
        hidden_states: torch.Tensor | None = None, residual: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run this stage on one micro-batch of ``tokens`` tokens.

        First stage: ``input_ids`` [tokens] in. Later stages: the previous stage's
        ``hidden_states`` and ``residual`` [tokens, hidden] in. Returns ``(hidden_states,
        residual)`` for the next stage, or on the last stage ``(final normed hidden, None)``.
        """
        # Hint: lesson 5's fused layers carry (hidden_states, residual); the residual is None only before layer 0.
        raise NotImplementedError("Lesson 21: implement Qwen3Stage.forward in aios/engine/pipeline.py — see exercises/lesson21/README.md, 'What to implement'")

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """Last stage: [n, hidden] -> float32 logits [n, vocab] on the stage's TP rank 0, None on its other ranks."""
        logits = self.lm_head(hidden_states)
        return None if logits is None else logits.float()


def stage_model_class(config) -> type:
    """The checkpoint's model class (``aios.models.registry``): Qwen3ForCausalLM, or Qwen3MoeForCausalLM
    whose MoE config is checked here. A stage takes its decoder layer class and fused-name mapping from it."""
    from aios.models.registry import model_class
    from aios.utils.moe_config import check_moe_config, is_moe_config

    if is_moe_config(config):
        check_moe_config(config)
    return model_class(config)


def stage_owns_tensor(name: str, stage: Stage, tied_embeddings: bool) -> bool:
    """Whether checkpoint tensor ``name`` belongs to ``stage``.

    ``model.layers.{i}.*`` belongs to the stage whose range holds ``i``; ``model.embed_tokens.weight``
    to the first stage (and, with tied embeddings, to the last, whose LM head is that matrix);
    ``model.norm.weight`` and ``lm_head.weight`` to the last stage.
    """
    # Hint: split the name on "."; a layer's index is the part after "layers".
    raise NotImplementedError("Lesson 21: implement stage_owns_tensor in aios/engine/pipeline.py — see exercises/lesson21/README.md, 'What to implement'")


def load_stage_weights(model: Qwen3Stage, model_dir) -> None:
    """Load the checkpoint tensors this stage owns (``stage_owns_tensor``) into its fused parameters.

    Like lesson 10's ``load_packed_weights``, but tensors of other stages are skipped, and on a
    last stage without the embedding a tied checkpoint's ``model.embed_tokens.weight`` fills the LM head.
    A Qwen3-MoE stage loads through lesson 20's ``load_moe_weights`` (either expert layout), given
    this plan and the same ownership test, so only the experts of this stage's layers are read.
    Raises CheckpointMismatchError for a missing or unexpected tensor of this stage.
    """
    from aios.layers.linear import default_weight_loader
    from aios.utils.loader import CheckpointMismatchError, checkpoint_plan, checkpoint_slices, report_mismatch
    from aios.utils.moe_config import is_moe_config

    stage, tied = model.stage, bool(getattr(model.config, "tie_word_embeddings", False))
    plan = checkpoint_plan(model)
    if tied and stage.is_last and not stage.is_first:
        plan["model.embed_tokens.weight"] = plan.pop("lm_head.weight")
    if is_moe_config(model.config):
        from aios.models.qwen3_moe import load_moe_weights

        load_moe_weights(model, model_dir, plan, owns=lambda name: stage_owns_tensor(name, stage, tied))
        return
    params = dict(model.named_parameters())
    loaded, unused = set(), []
    for name, tensor in checkpoint_slices(model_dir):
        if (tied and name == "lm_head.weight") or not stage_owns_tensor(name, stage, tied):
            continue
        if name not in plan:
            unused.append(name)
            continue
        param_name, shard_id = plan[name]
        param = params[param_name]
        try:
            getattr(param, "weight_loader", default_weight_loader)(param, tensor, shard_id)
        except ValueError as error:
            raise CheckpointMismatchError(f"checkpoint tensor {name!r} {error}") from None
        loaded.add(name)
    report_mismatch(sorted(set(plan) - loaded), unused)


def load_stage_model(config, stage: Stage) -> Qwen3Stage:
    """Build this rank's ``Qwen3Stage`` on ``config.device`` in ``config.dtype`` and fill its weights."""
    from aios.utils.loader import default_dtype_and_device, fill_random_weights

    with default_dtype_and_device(config.dtype, config.device):
        model = Qwen3Stage(config.hf_config, stage)
    if config.load_format == "dummy":
        fill_random_weights(model)
    else:
        load_stage_weights(model, config.model)
    return model.eval()


# ---------------------------------------------------------------------------- point-to-point


def send_activations(hidden_states: torch.Tensor, residual: torch.Tensor, dst: int) -> list:
    """Start sending one micro-batch's ``hidden_states`` and ``residual`` [tokens, hidden] to world rank ``dst``.

    Returns the send handles (wait on them before the tensors are reused). The receiver
    posts its receives in the same order: hidden states first, then the residual.
    """
    # Hint: torch.distributed.isend needs contiguous tensors; keep them alive until the send completes.
    raise NotImplementedError("Lesson 21: implement send_activations in aios/engine/pipeline.py — see exercises/lesson21/README.md, 'What to implement'")


def recv_activations(num_tokens: int, hidden_size: int, dtype: torch.dtype, device, src: int):
    """Receive one micro-batch's ``(hidden_states, residual)``, each [num_tokens, hidden_size], from world rank ``src``.

    The shapes come from the step's metadata (every rank knows the micro-batch's token
    count), so the buffers are allocated before anything arrives.
    """
    raise NotImplementedError("Lesson 21: implement recv_activations in aios/engine/pipeline.py — see exercises/lesson21/README.md, 'What to implement'")


def split_micro_batches(seqs: list, num_micro_batches: int) -> list[list]:
    """Cut a step's sequences into at most ``num_micro_batches`` contiguous, non-empty, near-equal parts, in order.

    Example: 5 sequences, 2 micro-batches -> [s0, s1, s2], [s3, s4].
    """
    raise NotImplementedError("Lesson 21: implement split_micro_batches in aios/engine/pipeline.py — see exercises/lesson21/README.md, 'What to implement'")
