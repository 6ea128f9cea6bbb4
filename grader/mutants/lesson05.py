"""Lesson 5 mutants: the pre-allocated KV cache and the fused residual-add RMSNorm."""

from grader.mutants import Mutant

CACHE = "aios/engine/kv_cache.py"
NORM = "aios/layers/layernorm.py"
MODEL = "aios/models/qwen3.py"
WRITE = """\
        self.k[layer_idx, positions] = k
        self.v[layer_idx, positions] = v
        end = int(positions[-1]) + 1
        return causal_attention(q, self.k[layer_idx, :end], self.v[layer_idx, :end], scale)
"""
FUSED = """\
    summed = x.float() + residual.float()
    new_residual = summed.to(input_dtype)
    variance = summed.pow(2).mean(dim=-1, keepdim=True)
    normed = (summed * torch.rsqrt(variance + eps)).to(input_dtype)
    return weight * normed, new_residual
"""
FIRST_LAYER = """\
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
"""

MUTANTS = [
    Mutant(5, "attends-over-the-whole-buffer", CACHE,
           find=WRITE,
           replace=WRITE.replace("self.k[layer_idx, :end], self.v[layer_idx, :end]", "self.k[layer_idx], self.v[layer_idx]"),
           bug="attention reads all max_len rows, the unwritten zero rows included"),
    Mutant(5, "current-token-not-attended", CACHE,
           find=WRITE,
           replace=WRITE.replace("end = int(positions[-1]) + 1", "end = int(positions[-1])"),
           bug="off by one: the keys end before the token just written"),
    Mutant(5, "written-at-the-front", CACHE,
           find=WRITE,
           replace=WRITE.replace("self.k[layer_idx, positions] = k", "self.k[layer_idx, : len(positions)] = k")
           .replace("self.v[layer_idx, positions] = v", "self.v[layer_idx, : len(positions)] = v"),
           bug="new K/V rows are written from row 0 instead of at their positions"),
    Mutant(5, "keys-written-into-values", CACHE,
           find=WRITE,
           replace=WRITE.replace("self.v[layer_idx, positions] = v", "self.v[layer_idx, positions] = k"),
           bug="copy-paste: the value cache receives the keys"),
    Mutant(5, "cache-ignores-dtype", CACHE,
           find="        self.k = torch.zeros(shape, dtype=dtype, device=device)\n        self.v = torch.zeros(shape, dtype=dtype, device=device)\n",
           replace="        self.k = torch.zeros(shape, device=device)\n        self.v = torch.zeros(shape, device=device)\n",
           bug="the cache is allocated in the default float32 whatever the model's dtype (twice the memory in bf16)"),
    Mutant(5, "residual-stream-kept-in-float32", NORM,
           find=FUSED,
           replace=FUSED.replace("new_residual = summed.to(input_dtype)", "new_residual = summed"),
           bug="the new residual is returned in float32 instead of the model's dtype"),
    Mutant(5, "normalises-x-not-the-sum", NORM,
           find=FUSED,
           replace=FUSED.replace("variance = summed.pow(2)", "variance = x.float().pow(2)")
           .replace("normed = (summed * torch.rsqrt", "normed = (x.float() * torch.rsqrt"),
           bug="the norm is applied to x alone; the residual is added but never normalised"),
    Mutant(5, "fused-weight-before-cast", NORM,
           find=FUSED,
           replace=FUSED.replace("normed = (summed * torch.rsqrt(variance + eps)).to(input_dtype)\n    return weight * normed, new_residual",
                                 "normed = summed * torch.rsqrt(variance + eps)\n    return (weight * normed).to(input_dtype), new_residual"),
           bug="the fused norm multiplies by the weight in float32 and casts afterwards (lesson 1's order reversed)"),
    Mutant(5, "first-residual-is-the-normed-stream", MODEL,
           find=FIRST_LAYER,
           replace=("        if residual is None:\n            hidden_states = self.input_layernorm(hidden_states)\n"
                    "            residual = hidden_states\n"),
           bug="in the first layer the residual stream starts from the normalised embeddings"),
    Mutant(5, "layer-adds-its-own-residual", MODEL,
           find="        return self.mlp(hidden_states), residual\n",
           replace="        return self.mlp(hidden_states) + residual, residual\n",
           bug="the fused layer adds the residual to its output as well: the next norm adds it a second time"),
]
