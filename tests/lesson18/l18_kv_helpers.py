"""Test code that lesson 18's FP8 KV-cache tests run on the learner's side (the ``learner_helper`` fixture).

``cached_logits`` runs the model over each document as one prefill through a paged KV cache,
so every query attends over keys and values read back from the cache (quantized ones for FP8).
"""

import math

import torch

from aios.layers.paged_attention import PagedKVCache
from aios.utils.context import Context, using_context
from aios.utils.loader import load_qwen3

BLOCK_SIZE = 16


def cached_logits(model_dir, documents, kv_dtype: str, backend: str = "torch", kv_scales=None) -> list:
    """Float32 logits [len(doc), vocab] per document, each prefilled at once through a PagedKVCache whose
    elements are float32 ("auto") or float8_e4m3fn ("fp8", with ``kv_scales`` = (k_scales, v_scales))."""
    model = load_qwen3(model_dir, torch.float32, fused_layers=True)
    config = model.config
    dtype = torch.float8_e4m3fn if kv_dtype == "fp8" else torch.float32
    results = []
    with torch.no_grad():
        for ids in documents:
            n = len(ids)
            blocks = math.ceil(n / BLOCK_SIZE)
            cache = PagedKVCache(config.num_hidden_layers, blocks, BLOCK_SIZE, config.num_key_value_heads,
                                 config.head_dim, dtype, "cpu", backend=backend, kv_scales=kv_scales)
            positions = torch.arange(n)
            context = Context(
                kv_cache=cache, positions=positions, is_prefill=True,
                cu_seqlens_q=torch.tensor([0, n], dtype=torch.int32), context_lens=torch.tensor([n], dtype=torch.int32),
                slot_mapping=torch.arange(n), block_tables=torch.arange(blocks, dtype=torch.int32)[None],
                max_seqlen_q=n, max_seqlen_k=n,
            )
            with using_context(context):
                hidden = model(torch.tensor(ids), positions)
            results.append(model.compute_logits(hidden).float())
    return results


def kv_amax(model_dir, documents) -> tuple[list[float], list[float]]:
    """Largest |K| and |V| per layer over the documents (what a calibrated scale would be built from)."""
    model = load_qwen3(model_dir, torch.float32, fused_layers=True)
    layers = model.config.num_hidden_layers
    k_max, v_max = [0.0] * layers, [0.0] * layers

    class Recorder:
        def attend(self, layer_idx, q, k, v, context, scale):
            from aios.layers.attention import causal_attention

            k_max[layer_idx] = max(k_max[layer_idx], k.abs().max().item())
            v_max[layer_idx] = max(v_max[layer_idx], v.abs().max().item())
            return causal_attention(q, k, v, scale)

    with torch.no_grad():
        for ids in documents:
            with using_context(Context(kv_cache=Recorder(), positions=torch.arange(len(ids)))):
                model(torch.tensor(ids), torch.arange(len(ids)))
    return k_max, v_max
