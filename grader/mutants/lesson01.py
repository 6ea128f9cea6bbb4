"""Lesson 1 mutants: RMSNorm, RoPE, GQA causal attention, gated MLP."""

from grader.mutants import Mutant

NORM = "aios/layers/layernorm.py"
ROPE = "aios/layers/rotary_embedding.py"
ATTENTION = "aios/layers/attention.py"
MLP = "aios/layers/activation.py"
SCORES = '    scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scale\n'
MASKED = """\
    offset = kv_len - q_len
    allowed = torch.ones(q_len, kv_len, dtype=torch.bool, device=q.device).tril(diagonal=offset)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = scores.softmax(dim=-1)
"""

MUTANTS = [
    Mutant(1, "rmsnorm-weight-before-cast", NORM,
           find="    return weight * normed.to(input_dtype)\n    # END SOLUTION\n\n\ndef add_rms_norm",
           replace="    return (weight * normed).to(input_dtype)\n    # END SOLUTION\n\n\ndef add_rms_norm",
           bug="RMSNorm multiplies by the weight in float32, then casts back (transformers casts first)"),
    Mutant(1, "rmsnorm-mean-over-everything", NORM,
           find="    variance = x32.pow(2).mean(dim=-1, keepdim=True)\n    normed = x32",
           replace="    variance = x32.pow(2).mean()\n    normed = x32",
           bug="the mean of the squares is taken over the whole tensor, not over each row's hidden axis"),
    Mutant(1, "rmsnorm-eps-outside-sqrt", NORM,
           find="    normed = x32 * torch.rsqrt(variance + eps)\n    return weight",
           replace="    normed = x32 / (torch.sqrt(variance) + eps)\n    return weight",
           bug="eps is added after the square root (x / (sqrt(mean) + eps)) instead of inside it"),
    Mutant(1, "rope-frequencies-use-i-not-2i", ROPE,
           find="inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))",
           replace="inv_freq = 1.0 / (base ** (torch.arange(head_dim // 2, dtype=torch.float32) / head_dim))",
           bug="the exponent uses i / head_dim instead of 2i / head_dim, so frequencies fall off half as fast"),
    Mutant(1, "rope-positions-start-at-1", ROPE,
           find="positions = torch.arange(max_positions, dtype=torch.float32)",
           replace="positions = torch.arange(1, max_positions + 1, dtype=torch.float32)",
           bug="the table's row p holds the angles of position p + 1 (positions counted from 1)"),
    Mutant(1, "rope-interleaved-pairs", ROPE,
           find="    x1, x2 = x.float().chunk(2, dim=-1)\n",
           replace="    x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]\n",
           bug="rotates even/odd neighbours (GPT-J layout) instead of the two halves (Qwen3's rotate-half)"),
    Mutant(1, "rope-rotates-backwards", ROPE,
           find="rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)",
           replace="rotated = torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)",
           bug="the sine terms have swapped signs: every vector turns by minus its angle"),
    Mutant(1, "rope-apply-in-bf16", ROPE,
           find="    x1, x2 = x.float().chunk(2, dim=-1)\n    cos = cos.unsqueeze(1)\n    sin = sin.unsqueeze(1)\n",
           replace=("    x1, x2 = x.chunk(2, dim=-1)\n    cos = cos.unsqueeze(1).to(x.dtype)\n"
                    "    sin = sin.unsqueeze(1).to(x.dtype)\n"),
           bug="apply_rotary computes in x's dtype (bf16 tables and products) instead of float32"),
    Mutant(1, "attention-scores-in-bf16", ATTENTION,
           find=(SCORES + MASKED + '    out = torch.einsum("hqk,khd->qhd", probs, v.float())\n'),
           replace=(SCORES.replace("q.float(), k.float()", "q, k") + MASKED
                    + '    out = torch.einsum("hqk,khd->qhd", probs, v)\n'),
           bug="scores and softmax are computed in the inputs' dtype (bf16) instead of float32"),
    Mutant(1, "attention-gqa-repeat-not-interleave", ATTENTION,
           find="    k = k.repeat_interleave(group, dim=1)\n    v = v.repeat_interleave(group, dim=1)\n",
           replace="    k = k.repeat(1, group, 1)\n    v = v.repeat(1, group, 1)\n",
           bug="GQA tiles the KV heads (0, 1, 0, 1) instead of repeating each for its group (0, 0, 1, 1)"),
    Mutant(1, "attention-mask-not-shifted", ATTENTION,
           find="allowed = torch.ones(q_len, kv_len, dtype=torch.bool, device=q.device).tril(diagonal=offset)",
           replace="allowed = torch.ones(q_len, kv_len, dtype=torch.bool, device=q.device).tril()",
           bug="the causal mask ignores kv_len - q_len: with fewer queries than keys they see too little"),
    Mutant(1, "attention-divides-by-scale", ATTENTION,
           find='scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scale',
           replace='scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) / scale',
           bug="divides by scale (already 1/sqrt(head_dim)) instead of multiplying by it"),
    Mutant(1, "silu-on-the-up-projection", MLP,
           find="    return F.silu(gate) * up\n",
           replace="    return F.silu(up) * gate\n",
           bug="the SiLU is applied to the up projection and the gate multiplies, the halves swapped"),
]
