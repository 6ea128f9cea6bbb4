"""KV caches for one sequence: growing (lesson 4), pre-allocated (lesson 5) and paged (lesson 6).

A cache is anything with ``attend(layer_idx, q, k, v, context, scale)``: it keeps
this step's keys and values for the layer, then returns attention of the new
queries over every key seen so far. The model does not know which cache it uses.
"""

import torch

from aios.engine.block_manager import BlockManager, slot_mapping
from aios.engine.sequence import Sequence
from aios.layers.attention import causal_attention
from aios.layers.paged_attention import PagedKVCache, gather_kv, store_kvcache


class GrowingKVCache:
    """Keeps each layer's K and V as tensors that grow by concatenation every step.

    Simple and correct, but every step reallocates and copies the whole cache.
    """

    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    def attend(self, layer_idx: int, q, k, v, context, scale: float) -> torch.Tensor:
        """q: [new, q_heads, D]; k, v: [new, kv_heads, D] -> [new, q_heads, D]."""
        # BEGIN SOLUTION lesson4
        # Hint: append along the token axis, then the new queries are the *last* rows of the sequence.
        if self.keys[layer_idx] is None:
            self.keys[layer_idx], self.values[layer_idx] = k, v
        else:
            self.keys[layer_idx] = torch.cat([self.keys[layer_idx], k])
            self.values[layer_idx] = torch.cat([self.values[layer_idx], v])
        return causal_attention(q, self.keys[layer_idx], self.values[layer_idx], scale)
        # END SOLUTION

    def __len__(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[0]


class StaticKVCache:
    """One cache tensor allocated up front for K (``self.k``) and one for V (``self.v``),
    each [layers, max_len, kv_heads, head_dim].

    New K/V are written at their token positions; nothing is reallocated while generating.
    """

    def __init__(self, num_layers: int, max_len: int, num_kv_heads: int, head_dim: int, dtype, device):
        # BEGIN SOLUTION lesson5
        shape = (num_layers, max_len, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        # END SOLUTION

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
        # BEGIN SOLUTION lesson5
        # Hint: index_copy_ or plain advanced indexing writes rows at given positions in place.
        positions = context.positions
        self.k[layer_idx, positions] = k
        self.v[layer_idx, positions] = v
        end = int(positions[-1]) + 1
        return causal_attention(q, self.k[layer_idx, :end], self.v[layer_idx, :end], scale)
        # END SOLUTION


class PagedSequenceKVCache:
    """One sequence's K/V kept in paged storage (lesson 6): the single-sequence drivers, unchanged.

    Blocks come from a BlockManager as the sequence grows; ``store_kvcache`` writes each
    new token into its slot and ``gather_kv`` reads the sequence back in order. Nothing
    is batched yet (that is lesson 7); what changes is that memory is taken one block
    at a time and given back with ``release()``.
    """

    def __init__(self, storage: PagedKVCache, block_manager: BlockManager):
        self.storage = storage
        self.block_manager = block_manager
        # The allocator counts a sequence's tokens to size its block table; this cache
        # only ever needs the count, so the ids are placeholders.
        self.seq = Sequence([], block_size=storage.block_size)

    @classmethod
    def for_model(cls, model, num_blocks: int, block_size: int = 16) -> "PagedSequenceKVCache":
        """A cache with its own pool of ``num_blocks`` blocks, shaped for ``model``."""
        config = model.config
        weight = next(model.parameters())
        storage = PagedKVCache(
            config.num_hidden_layers, num_blocks, block_size, config.num_key_value_heads, config.head_dim,
            weight.dtype, weight.device,
        )
        return cls(storage, BlockManager(num_blocks, block_size))

    @property
    def block_table(self) -> list[int]:
        return self.seq.block_table

    def __len__(self) -> int:
        return len(self.seq)

    def _cover(self, num_tokens: int) -> None:
        """Grow the block table until it has a slot for every one of ``num_tokens`` tokens."""
        missing = num_tokens - len(self.seq)
        if missing <= 0:
            return
        self.seq.token_ids.extend([0] * missing)
        if not self.seq.block_table:
            self.block_manager.allocate(self.seq)
        while len(self.seq.block_table) < self.seq.num_blocks:
            self.block_manager.may_append(self.seq)

    def attend(self, layer_idx: int, q, k, v, context, scale: float) -> torch.Tensor:
        """Store k, v in the slots of ``context.positions``, then attend over every token so far."""
        positions = context.positions.tolist()
        num_tokens = positions[-1] + 1
        self._cover(num_tokens)
        slots = slot_tensor(self.seq.block_table, positions, self.storage.block_size, q.device)
        k_cache, v_cache = self.storage.k_cache[layer_idx], self.storage.v_cache[layer_idx]
        store_kvcache(k, v, k_cache, v_cache, slots)
        block_table = torch.tensor(self.seq.block_table, dtype=torch.int32, device=q.device)
        keys, values = gather_kv(k_cache, v_cache, block_table, num_tokens)
        return causal_attention(q, keys, values, scale)

    def release(self) -> None:
        """Give every block back to the allocator."""
        self.block_manager.deallocate(self.seq)
        self.seq.token_ids.clear()


def slot_tensor(block_table: list[int], positions: list[int], block_size: int, device) -> torch.Tensor:
    """``slot_mapping`` as an int64 tensor on ``device``."""
    return torch.tensor(slot_mapping(block_table, positions, block_size), dtype=torch.int64, device=device)
