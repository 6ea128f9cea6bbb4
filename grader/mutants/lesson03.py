"""Lesson 3 mutants: the Qwen3 modules, the safetensors loader and generation without a cache."""

from grader.mutants import Mutant

MODEL = "aios/models/qwen3.py"
LOADER = "aios/utils/loader.py"
GENERATE = "aios/generate.py"
UNFUSED_LAYER = """\
            h = hidden_states + self.self_attn(positions, self.input_layernorm(hidden_states))
            h = h + self.mlp(self.post_attention_layernorm(h))
"""

MUTANTS = [
    Mutant(3, "qk-norm-after-rope", MODEL,
           find="        q, k = self.rotary_emb(positions, self.q_norm(q), self.k_norm(k))\n        out = self.attn(q, k, v)\n"
                "        return self.o_proj(out.reshape(tokens, self.num_heads * self.head_dim))\n",
           replace="        q, k = self.rotary_emb(positions, q, k)\n        q, k = self.q_norm(q), self.k_norm(k)\n"
                   "        out = self.attn(q, k, v)\n"
                   "        return self.o_proj(out.reshape(tokens, self.num_heads * self.head_dim))\n",
           bug="q_norm and k_norm are applied after the rotation instead of before it"),
    Mutant(3, "values-normalised-too", MODEL,
           find="        v = self.v_proj(hidden_states).view(tokens, self.num_kv_heads, self.head_dim)\n"
                "        q, k = self.rotary_emb(positions, self.q_norm(q), self.k_norm(k))\n        out = self.attn(q, k, v)\n"
                "        return self.o_proj(out.reshape(tokens, self.num_heads * self.head_dim))\n",
           replace="        v = self.k_norm(self.v_proj(hidden_states).view(tokens, self.num_kv_heads, self.head_dim))\n"
                   "        q, k = self.rotary_emb(positions, self.q_norm(q), self.k_norm(k))\n        out = self.attn(q, k, v)\n"
                   "        return self.o_proj(out.reshape(tokens, self.num_heads * self.head_dim))\n",
           bug="v goes through k_norm as well (only q and k are normalised per head)"),
    Mutant(3, "residual-of-the-normed-stream", MODEL,
           find=UNFUSED_LAYER,
           replace=("            normed = self.input_layernorm(hidden_states)\n"
                    "            h = normed + self.self_attn(positions, normed)\n"
                    "            h = h + self.mlp(self.post_attention_layernorm(h))\n"),
           bug="the attention residual adds the normalised stream instead of the un-normalised one"),
    Mutant(3, "one-norm-for-both-blocks", MODEL,
           find=UNFUSED_LAYER,
           replace=UNFUSED_LAYER.replace("self.mlp(self.post_attention_layernorm(h))", "self.mlp(self.input_layernorm(h))"),
           bug="the MLP block reuses input_layernorm instead of post_attention_layernorm"),
    Mutant(3, "final-norm-skipped", MODEL,
           find="        if residual is None:\n            return self.norm(hidden_states)\n",
           replace="        if residual is None:\n            return hidden_states\n",
           bug="the model returns the last layer's output without the final RMSNorm"),
    Mutant(3, "mlp-gate-and-up-swapped", MODEL,
           find="        return self.down_proj(silu_and_mul(self.gate_proj(x), self.up_proj(x)))\n",
           replace="        return self.down_proj(silu_and_mul(self.up_proj(x), self.gate_proj(x)))\n",
           bug="the SiLU goes on up_proj's output and gate_proj's output multiplies (the two swapped)"),
    Mutant(3, "tied-lm-head-tensor-not-skipped", LOADER,
           find="                if tied and name == \"lm_head.weight\":\n                    continue\n",
           replace="",
           bug="a tied checkpoint that also stores lm_head.weight reports it as unused (it must be skipped)"),
    Mutant(3, "only-the-first-shard", LOADER,
           find="    for path in checkpoint_files(model_dir):\n        with safe_open(str(path), framework=\"pt\", device=\"cpu\") as f:\n"
                "            for name in f.keys():\n                if tied",
           replace="    for path in checkpoint_files(model_dir)[:1]:\n        with safe_open(str(path), framework=\"pt\", device=\"cpu\") as f:\n"
                   "            for name in f.keys():\n                if tied",
           bug="only the first safetensors file of a sharded checkpoint is read"),
    Mutant(3, "missing-parameters-not-reported", LOADER,
           find="    report_mismatch(sorted(set(params) - filled), unused)\n",
           replace="    report_mismatch([], unused)\n",
           bug="parameters the checkpoint never filled go unreported (they keep their random init)"),
    Mutant(3, "positions-start-at-1", GENERATE,
           find="        positions = torch.arange(len(tokens), device=device)\n        hidden = model(input_ids, positions)\n"
                "        next_token = int(model.compute_logits(hidden[-1:]).argmax(dim=-1))\n",
           replace="        positions = torch.arange(1, len(tokens) + 1, device=device)\n        hidden = model(input_ids, positions)\n"
                   "        next_token = int(model.compute_logits(hidden[-1:]).argmax(dim=-1))\n",
           bug="positions are counted from 1 instead of 0"),
    Mutant(3, "logits-of-the-first-row", GENERATE,
           find="        positions = torch.arange(len(tokens), device=device)\n        hidden = model(input_ids, positions)\n"
                "        next_token = int(model.compute_logits(hidden[-1:]).argmax(dim=-1))\n",
           replace="        positions = torch.arange(len(tokens), device=device)\n        hidden = model(input_ids, positions)\n"
                   "        next_token = int(model.compute_logits(hidden[:1]).argmax(dim=-1))\n",
           bug="the next token is predicted from the first position's hidden state, not the last"),
]
