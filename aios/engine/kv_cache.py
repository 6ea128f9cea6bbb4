"""Contiguous KV caches for one sequence: growing (lesson 4) and pre-allocated (lesson 5).

A cache is anything with ``attend(layer_idx, q, k, v, context, scale)``: it keeps
this step's keys and values for the layer, then returns attention of the new
queries over every key seen so far. The model does not know which cache it uses.
"""

import torch

from aios.layers.attention import causal_attention


class GrowingKVCache:
    """Keeps each layer's K and V as tensors that grow by concatenation every step.

    Simple and correct, but every step reallocates and copies the whole cache.
    """

    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    def attend(self, layer_idx: int, q, k, v, context, scale: float) -> torch.Tensor:
        """q: [new, q_heads, D]; k, v: [new, kv_heads, D] -> [new, q_heads, D]."""
        # Hint: append along the token axis, then the new queries are the *last* rows of the sequence.
        raise NotImplementedError("Lesson 4: implement GrowingKVCache.attend in aios/engine/kv_cache.py — see exercises/lesson04/README.md, 'What to implement'")

    def __len__(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[0]


class StaticKVCache:
    """One cache tensor allocated up front: [layers, max_len, kv_heads, head_dim] for K and for V.

    New K/V are written at their token positions; nothing is reallocated while generating.
    """

    def __init__(self, num_layers: int, max_len: int, num_kv_heads: int, head_dim: int, dtype, device):
        raise NotImplementedError("Lesson 5: implement StaticKVCache.__init__ in aios/engine/kv_cache.py — see exercises/lesson05/README.md, 'What to implement'")

    @classmethod
    def for_model(cls, model, max_len: int) -> "StaticKVCache":
        """A cache sized for ``model`` (its layers, KV heads, dtype and device) and ``max_len`` tokens."""
        config = model.config
        weight = next(model.parameters())
        return cls(
            config.num_hidden_layers, max_len, config.num_key_value_heads, config.head_dim, weight.dtype, weight.device
        )

    def attend(self, layer_idx: int, q, k, v, context, scale: float) -> torch.Tensor:
        """Write k, v at ``context.positions``, then attend over positions 0 ..= the last one."""
        # Hint: index_copy_ or plain advanced indexing writes rows at given positions in place.
        raise NotImplementedError("Lesson 5: implement StaticKVCache.attend in aios/engine/kv_cache.py — see exercises/lesson05/README.md, 'What to implement'")
