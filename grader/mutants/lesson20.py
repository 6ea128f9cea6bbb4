"""Lesson 20 mutants: routing, the per-expert loop, the sort into expert blocks, the grouped-matmul kernel,
the fused step's glue, the expert weight loader and the choice of sparse layers."""

from grader.mutants import Mutant

MOE = "aios/layers/fused_moe.py"
MODEL = "aios/models/qwen3_moe.py"

MUTANTS = [
    Mutant(20, "softmax-after-top-k", MOE,
           find="    probs = torch.softmax(router_logits.float(), dim=-1)\n"
                "    weights, ids = torch.topk(probs, top_k, dim=-1)\n",
           replace="    logits, ids = torch.topk(router_logits.float(), top_k, dim=-1)\n"
                   "    weights = torch.softmax(logits, dim=-1)\n",
           bug="route_tokens takes the top-k logits first and softmaxes over those k, so the weights always sum "
               "to 1 even without norm_topk_prob"),
    Mutant(20, "never-renormalises", MOE,
           find="    if renormalize:\n        weights = weights / weights.sum(dim=-1, keepdim=True)\n",
           replace="",
           bug="route_tokens ignores norm_topk_prob: the k weights are never rescaled to sum to one"),
    Mutant(20, "softmax-in-model-dtype", MOE,
           find="    probs = torch.softmax(router_logits.float(), dim=-1)",
           replace="    probs = torch.softmax(router_logits, dim=-1)",
           bug="route_tokens softmaxes in the router's dtype (bf16 in a bf16 model) instead of float32"),
    Mutant(20, "loop-forgets-routing-weight", MOE,
           find="        out.index_add_(0, tokens, y.float() * topk_weights[tokens, slots, None].float())",
           replace="        out.index_add_(0, tokens, y.float())",
           bug="moe_loop adds every chosen expert's output unweighted"),
    Mutant(20, "loop-silu-on-up", MOE,
           find="        hidden = F.silu(gate_up[:, :intermediate]) * gate_up[:, intermediate:]\n        y = F.linear",
           replace="        hidden = gate_up[:, :intermediate] * F.silu(gate_up[:, intermediate:])\n        y = F.linear",
           bug="moe_loop applies SiLU to the up half and multiplies by the raw gate (gate and up swapped)"),
    Mutant(20, "align-inclusive-starts", MOE,
           find="    starts = torch.cumsum(counts, 0) - counts\n",
           replace="    starts = torch.cumsum(counts, 0)\n",
           bug="align_tokens_to_blocks uses the inclusive cumulative sum as each expert's first pair, so every "
               "rank inside an expert is off by that expert's count"),
    Mutant(20, "align-padded-offset-off-by-one-expert", MOE,
           find="    padded_starts = padded_ends - padded\n",
           replace="    padded_starts = padded_ends - padded[0]\n",
           bug="align_tokens_to_blocks subtracts the first expert's padded count from every end, so experts "
               "after the first start at the wrong block"),
    Mutant(20, "align-no-padding", MOE,
           find="    padded = (counts + block_m - 1) // block_m * block_m\n",
           replace="    padded = counts\n",
           bug="align_tokens_to_blocks does not pad each expert's run to whole blocks, so a block can hold pairs "
               "of two experts"),
    Mutant(20, "align-boundary-block-to-previous-expert", MOE,
           find="    block_expert = torch.searchsorted(padded_ends, block_starts, right=True)",
           replace="    block_expert = torch.searchsorted(padded_ends, block_starts, right=False)",
           bug="align_tokens_to_blocks looks the block's start up with right=False: a block starting exactly at "
               "an expert's end is given that (previous) expert"),
    Mutant(20, "align-no-unused-marker", MOE,
           find="    block_expert = torch.where(block_expert < num_experts, block_expert, torch.full_like(block_expert, -1))\n",
           replace="    block_expert = block_expert.clamp(max=num_experts - 1)\n",
           bug="align_tokens_to_blocks gives the unused blocks at the end the last expert instead of -1"),
    Mutant(20, "kernel-reads-pair-row-in-gemm1", MOE,
           find="        a_rows = pairs // rows_per_a\n",
           replace="        a_rows = pairs\n",
           bug="the grouped kernel reads input row p for pair p in both GEMMs, where GEMM 1 must read token p // k"),
    Mutant(20, "kernel-drops-routing-weight", MOE,
           find="        if MUL_SCALE:\n            scale = tl.load(scale_ptr + pairs, mask=row_ok, other=0.0).to(tl.float32)\n"
                "            acc = acc * scale[:, None]\n",
           replace="",
           bug="the grouped kernel never multiplies GEMM 2's rows by the routing weight"),
    Mutant(20, "kernel-sentinel-row-stored", MOE,
           find="    tl.store(out_ptr + pairs[:, None] * stride_om + cols[None, :], acc.to(out_ptr.dtype.element_ty),\n"
                "                 mask=row_ok[:, None] & col_ok[None, :])",
           replace="    tl.store(out_ptr + tl.minimum(pairs, num_pairs - 1)[:, None] * stride_om + cols[None, :],\n"
                   "                 acc.to(out_ptr.dtype.element_ty), mask=col_ok[None, :])",
           bug="the grouped kernel stores the padding rows too (clamped onto the last pair), overwriting its result "
               "with zeros"),
    Mutant(20, "combine-averages-slots", MOE,
           find="    return out.view(tokens, top_k, -1).sum(dim=1, dtype=torch.float32).to(x.dtype)",
           replace="    return out.view(tokens, top_k, -1).mean(dim=1, dtype=torch.float32).to(x.dtype)",
           bug="fused_moe averages the k weighted expert outputs instead of adding them"),
    Mutant(20, "combine-views-slots-first", MOE,
           find="    return out.view(tokens, top_k, -1).sum(dim=1, dtype=torch.float32).to(x.dtype)",
           replace="    return out.view(top_k, tokens, -1).sum(dim=0, dtype=torch.float32).to(x.dtype)",
           bug="fused_moe reshapes the pair rows as [k, T, H], but pair t * k + j is slot j of token t"),
    Mutant(20, "stacked-gate-up-cut-as-one-block", MOE,
           find="            copy_into(param.data[:, :rows], sliced(loaded_weight, (slice(None), mine)))\n"
                "            copy_into(param.data[:, rows:], sliced(loaded_weight, (slice(None), up)))\n",
           replace="            block = slice(2 * rank * rows, 2 * (rank + 1) * rows)\n"
                   "            copy_into(param.data, sliced(loaded_weight, (slice(None), block)))\n",
           bug="FusedMoE.weight_loader cuts a stacked gate_up into tp equal blocks of 2I/tp rows: rank 0 gets all "
               "of gate, rank 1 all of up"),
    Mutant(20, "up-loaded-over-gate", MOE,
           find='            offset = 0 if which == "gate" else rows\n',
           replace='            offset = 0\n',
           bug="FusedMoE.weight_loader copies up_proj into the gate rows (offset 0), overwriting the gate"),
    Mutant(20, "sparse-step-from-zero", MODEL,
           find="    return (layer_idx + 1) % config.decoder_sparse_step == 0",
           replace="    return layer_idx % config.decoder_sparse_step == 0",
           bug="is_moe_layer counts decoder_sparse_step from layer 0: with a step of 2 the sparse layers come out "
               "as 0, 2, 4 instead of 1, 3, 5"),
    Mutant(20, "ignores-mlp-only-layers", MODEL,
           find="    if layer_idx in config.mlp_only_layers or config.num_experts == 0:",
           replace="    if config.num_experts == 0:",
           bug="is_moe_layer ignores mlp_only_layers"),
    Mutant(20, "block-always-renormalises", MODEL,
           find="        weights, ids = route_tokens(self.gate(x), self.top_k, self.renormalize)",
           replace="        weights, ids = route_tokens(self.gate(x), self.top_k, True)",
           bug="Qwen3MoeSparseBlock.forward always renormalises, whatever the config's norm_topk_prob says"),
]
