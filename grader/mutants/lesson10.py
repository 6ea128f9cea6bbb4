"""Lesson 10 mutants: fused QKV and gate/up layers, their weight loaders and the packed-modules loader."""

from grader.mutants import Mutant

LI = "aios/layers/linear.py"
QW = "aios/models/qwen3.py"
LO = "aios/utils/loader.py"

MUTANTS = [
    Mutant(10, "qkv-k-and-v-swapped", LI,
           find="            \"k\": (self.q_size, self.kv_size),\n            \"v\": (self.q_size + self.kv_size, self.kv_size),",
           replace="            \"k\": (self.q_size + self.kv_size, self.kv_size),\n            \"v\": (self.q_size, self.kv_size),",
           bug="the QKV loader puts v_proj's rows where k_proj's belong and the other way round"),
    Mutant(10, "qkv-v-after-two-query-blocks", LI,
           find="            \"v\": (self.q_size + self.kv_size, self.kv_size),",
           replace="            \"v\": (2 * self.q_size, self.kv_size),",
           bug="the QKV loader starts v at 2 * q_size, as if k had as many rows as q (right only without GQA)"),
    Mutant(10, "gate-up-offset-from-the-end", LI,
           find="        offset = sum(self.output_sizes[:shard_id]) // self.tp_size",
           replace="        offset = sum(self.output_sizes[shard_id + 1 :]) // self.tp_size",
           bug="the merged loader counts a part's offset from the end: up_proj lands before gate_proj"),
    Mutant(10, "gate-up-offset-by-own-size", LI,
           find="        offset = sum(self.output_sizes[:shard_id]) // self.tp_size",
           replace="        offset = shard_id * self.output_sizes[shard_id] // self.tp_size",
           bug="the merged loader places part i at i * its own size (right only when all parts have equal size)"),
    Mutant(10, "fused-split-k-and-v-swapped", QW,
           find="        q, k, v = self.qkv_proj(hidden_states).split([q_size, kv_size, kv_size], dim=-1)",
           replace="        q, v, k = self.qkv_proj(hidden_states).split([q_size, kv_size, kv_size], dim=-1)",
           bug="forward_fused unpacks the qkv_proj output as q, v, k"),
    Mutant(10, "fused-forgets-qk-norm", QW,
           find="        v = v.view(tokens, self.num_kv_heads, self.head_dim)\n"
                "        q, k = self.rotary_emb(positions, self.q_norm(q), self.k_norm(k))\n"
                "        out = self.attn(q, k, v)\n        return self.o_proj(out.reshape(tokens, q_size))",
           replace="        v = v.view(tokens, self.num_kv_heads, self.head_dim)\n"
                   "        q, k = self.rotary_emb(positions, q, k)\n"
                   "        out = self.attn(q, k, v)\n        return self.o_proj(out.reshape(tokens, q_size))",
           bug="forward_fused applies RoPE straight to the split q and k, skipping Qwen3's q_norm and k_norm"),
    Mutant(10, "plan-keeps-only-the-last-piece", LO,
           find="        pieces.setdefault(fused_module, []).append((checkpoint_module, shard_id))",
           replace="        pieces[fused_module] = [(checkpoint_module, shard_id)]",
           bug="checkpoint_plan inverts the mapping with plain assignment: a fused module keeps only its last piece"),
    Mutant(10, "plan-matches-substrings", LO,
           find="    for param_name, _ in model.named_parameters():\n        *prefix, module, leaf = param_name.split(\".\")\n"
                "        for checkpoint_module, shard_id in pieces.get(module, [(module, None)]):\n"
                "            plan[\".\".join([*prefix, checkpoint_module, leaf])] = (param_name, shard_id)",
           replace="    for param_name, _ in model.named_parameters():\n"
                   "        fused = next((m for m in pieces if m in param_name), None)\n"
                   "        for checkpoint_module, shard_id in pieces.get(fused, [(fused, None)]):\n"
                   "            name = param_name.replace(fused, checkpoint_module) if fused else param_name\n"
                   "            plan[name] = (param_name, shard_id)",
           bug="checkpoint_plan finds fused modules by substring, so a module whose name contains a fused "
               "module's name is split too"),
    Mutant(10, "loader-accepts-duplicates", LO,
           find="        if name in loaded:\n            raise CheckpointMismatchError(f\"checkpoint tensor {name!r} appears more than once\")\n",
           replace="",
           bug="load_packed_weights loads a tensor that appears twice in the checkpoint twice, silently"),
    Mutant(10, "loader-skips-unknown-silently", LO,
           find="        if name not in plan:\n            unused.append(name)\n            continue",
           replace="        if name not in plan:\n            continue",
           bug="load_packed_weights skips checkpoint tensors the model has no place for without reporting them"),
    Mutant(10, "loader-ignores-missing", LO,
           find="    report_mismatch(sorted(set(plan) - loaded), unused)\n    # END SOLUTION\n\n\ndef load_tensor",
           replace="    report_mismatch([], unused)\n    # END SOLUTION\n\n\ndef load_tensor",
           bug="load_packed_weights never reports parameters the checkpoint did not fill"),
    Mutant(10, "loader-loads-tied-lm-head", LO,
           find="        if tied and name == \"lm_head.weight\":\n            continue\n",
           replace="",
           bug="with tied embeddings, load_packed_weights treats the checkpoint's lm_head.weight copy as unexpected"),
    Mutant(10, "loader-lets-value-error-through", LO,
           find="        try:\n            weight_loader(param, tensor, shard_id)\n        except ValueError as error:\n"
                "            raise CheckpointMismatchError(f\"checkpoint tensor {name!r} {error}\") from None\n",
           replace="        weight_loader(param, tensor, shard_id)\n",
           bug="a wrongly shaped projection escapes as the weight loader's bare ValueError, without the tensor's name"),
]
