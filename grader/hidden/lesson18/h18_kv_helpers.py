"""Code lesson 18's hidden FP8 KV-cache tests run on the learner's side (the ``learner_helper`` fixture)."""

import torch

from aios.layers.paged_attention import PagedKVCache
from aios.utils.context import Context, using_context
from aios.utils.loader import load_qwen3


def logits_through_cache(model_dir, documents, fp8: bool, kv_scales=None, block_size: int = 8) -> list:
    """Float32 logits [len(doc), vocab] per document; each is prefilled in two chunks (a first half, then the rest
    attending over the cached first half) through a PagedKVCache of float32 or float8_e4m3fn elements."""
    model = load_qwen3(model_dir, torch.float32, fused_layers=True)
    config = model.config
    dtype = torch.float8_e4m3fn if fp8 else torch.float32
    out = []
    with torch.no_grad():
        for ids in documents:
            n = len(ids)
            blocks = -(-n // block_size)
            cache = PagedKVCache(config.num_hidden_layers, blocks + 1, block_size, config.num_key_value_heads,
                                 config.head_dim, dtype, "cpu", kv_scales=kv_scales)
            table = torch.arange(blocks, 0, -1, dtype=torch.int32)  # blocks in reverse order: ids 1..blocks
            pieces = []
            for start, end in ((0, n // 2), (n // 2, n)):
                positions = torch.arange(start, end)
                slots = table[positions // block_size].long() * block_size + positions % block_size
                context = Context(kv_cache=cache, positions=positions, is_prefill=True,
                                  cu_seqlens_q=torch.tensor([0, end - start], dtype=torch.int32),
                                  context_lens=torch.tensor([end], dtype=torch.int32), slot_mapping=slots,
                                  block_tables=table[None], max_seqlen_q=end - start, max_seqlen_k=end)
                with using_context(context):
                    pieces.append(model(torch.tensor(ids[start:end]), positions))
            out.append(model.compute_logits(torch.cat(pieces)).float())
    return out
