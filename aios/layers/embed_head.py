"""The token embedding and the language-model head, split over the vocabulary (lesson 14).

Both are ``[vocab, hidden]`` matrices, and the vocabulary is the big dimension
(151,936 rows for Qwen3), so with ``tp_size`` ranks each rank keeps a contiguous
block of ``vocab / tp`` rows:

* embedding: a rank can only look up the ids in its block. It writes zeros for
  the others, and an all-reduce adds the ranks' results: exactly one rank
  contributed each token's row;
* LM head: each rank scores the hidden states against its block of the
  vocabulary, and the driver (rank 0) gathers the blocks side by side into the
  full ``[tokens, vocab]`` logits. Only the driver samples.

With ``tp_size == 1`` both are an ordinary embedding lookup and linear layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aios.engine.distributed import all_reduce, gather_to_driver, get_tp_rank, get_tp_size
from aios.layers.linear import copy_into, divide, shard_for_rank


def embed_vocab_shard(input_ids: torch.Tensor, weight_shard: torch.Tensor, vocab_start: int) -> torch.Tensor:
    """This rank's part of the embedding lookup.

    input_ids: [tokens] over the whole vocabulary; weight_shard: [rows, hidden], the
    embedding rows of ids ``vocab_start .. vocab_start + rows - 1``. Returns
    [tokens, hidden]: the row of each id this rank holds, zeros for every other id.
    Summed over the ranks, this is the full embedding.
    """
    # Hint: shift the ids into the shard's own numbering, mask the ones that fall outside, look up,
    # Hint: then zero the masked rows (a masked id must still be a valid index for the lookup).
    raise NotImplementedError("Lesson 14: implement embed_vocab_shard in aios/layers/embed_head.py — see exercises/lesson14/README.md, 'What to implement'")


class VocabParallelEmbedding(nn.Module):
    """Token embedding whose rows are split over the ranks: rank r holds ids ``[r * V / tp, (r + 1) * V / tp)``."""

    def __init__(self, num_embeddings: int, embedding_dim: int,
                 tp_rank: int | None = None, tp_size: int | None = None):
        super().__init__()
        self.tp_rank = get_tp_rank() if tp_rank is None else tp_rank
        self.tp_size = get_tp_size() if tp_size is None else tp_size
        self.num_embeddings = num_embeddings
        rows = divide(num_embeddings, self.tp_size)
        self.vocab_start = self.tp_rank * rows
        self.weight = nn.Parameter(torch.empty(rows, embedding_dim), requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded_weight, shard_id=None) -> None:
        """Copy this rank's block of rows of the checkpoint's [vocab, hidden] matrix."""
        copy_into(param.data, shard_for_rank(loaded_weight, 0, self.tp_rank, self.tp_size))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: [tokens] -> embeddings [tokens, hidden] (the same full result on every rank)."""
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        raise NotImplementedError("Lesson 14: implement VocabParallelEmbedding.forward in aios/layers/embed_head.py — see exercises/lesson14/README.md, 'What to implement'")

    def extra_repr(self) -> str:
        rows, dim = self.weight.shape
        return f"vocab={self.num_embeddings}, rows_per_rank={rows}, dim={dim}, tp={self.tp_rank}/{self.tp_size}"


class ParallelLMHead(VocabParallelEmbedding):
    """The LM head: hidden states against this rank's block of the vocabulary, gathered on the driver.

    It has the same [vocab / tp, hidden] weight as the embedding, so a model with
    tied embeddings can share the embedding's parameter.
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """hidden_states: [n, hidden] -> logits [n, vocab] on the driver; None on the other ranks."""
        logits = F.linear(hidden_states, self.weight)
        if self.tp_size == 1:
            return logits
        raise NotImplementedError("Lesson 14: implement ParallelLMHead.forward in aios/layers/embed_head.py — see exercises/lesson14/README.md, 'What to implement'")
