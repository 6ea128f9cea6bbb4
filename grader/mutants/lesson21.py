"""Lesson 21 mutants: the layer split, the rank layout, the stage's forward, which tensors a stage loads,
the activation hand-over, micro-batches and the stage's KV cache."""

from grader.mutants import Mutant

PIPELINE = "aios/engine/pipeline.py"
PP_RUNNER = "aios/engine/pp_runner.py"

MUTANTS = [
    Mutant(21, "partition-remainder-on-last-stages", PIPELINE,
           find="        end = start + base + (1 if stage < extra else 0)\n",
           replace="        end = start + base + (1 if stage >= pp_size - extra else 0)\n",
           bug="the extra layers go to the last stages, which already carry the LM head and sampling (the README's "
               "rule puts them on the first)"),
    Mutant(21, "partition-remainder-off-by-one", PIPELINE,
           find="        end = start + base + (1 if stage < extra else 0)\n",
           replace="        end = start + base + (1 if stage <= extra else 0)\n",
           bug="one stage too many gets an extra layer (<= instead of <): the stages run past the last layer"),
    Mutant(21, "next-rank-plus-one", PIPELINE,
           find="        return None if self.pp_rank == self.pp_size - 1 else self.world_rank + self.tp_size\n",
           replace="        return None if self.pp_rank == self.pp_size - 1 else self.world_rank + 1\n",
           bug="activations go to the next world rank instead of the same TP rank of the next stage: with TP=2, "
               "rank 0 sends to its own TP partner"),
    Mutant(21, "prev-rank-minus-one", PIPELINE,
           find="        return None if self.pp_rank == 0 else self.world_rank - self.tp_size\n",
           replace="        return None if self.pp_rank == 0 else self.world_rank - 1\n",
           bug="a stage receives from the previous world rank instead of the same TP rank of the previous stage"),
    Mutant(21, "residual-not-forwarded", PIPELINE,
           find="    return [dist.isend(hidden_states.contiguous(), dst=dst), dist.isend(residual.contiguous(), dst=dst)]\n",
           replace="    return [dist.isend(hidden_states.contiguous(), dst=dst), dist.isend(hidden_states.contiguous(), dst=dst)]\n",
           bug="the residual stream is not sent on: the next stage receives the hidden states twice and continues "
               "with them as its residual"),
    Mutant(21, "last-stage-skips-final-norm", PIPELINE,
           find="        hidden_states, _ = self.model.norm(hidden_states, residual)\n        return hidden_states, None\n",
           replace="        return hidden_states + residual, None\n",
           bug="the last stage adds the residual but forgets the final RMSNorm before the LM head"),
    Mutant(21, "owns-layer-end-inclusive", PIPELINE,
           find="        return stage.start <= int(parts[2]) < stage.end\n",
           replace="        return stage.start <= int(parts[2]) <= stage.end\n",
           bug="a stage also claims the first layer of the next stage (<= end): it has no place for those tensors"),
    Mutant(21, "tied-head-not-loaded-on-last-stage", PIPELINE,
           find="        return stage.is_first or (tied_embeddings and stage.is_last)\n",
           replace="        return stage.is_first\n",
           bug="with tied embeddings the last stage never loads the embedding matrix its LM head shares"),
    Mutant(21, "micro-batches-drop-the-remainder", PIPELINE,
           find="        end = start + base + (1 if index < extra else 0)\n",
           replace="        end = start + base\n",
           bug="split_micro_batches gives every part len(seqs) // n sequences: the remainder is never run"),
    Mutant(21, "kv-cache-for-all-layers", PP_RUNNER,
           find="            self.stage.num_layers, config.num_kvcache_blocks, self.block_size,\n",
           replace="            hf.num_hidden_layers, config.num_kvcache_blocks, self.block_size,\n",
           bug="every stage allocates the KV cache of all the model's layers instead of its own: pipeline "
               "parallelism's memory saving is gone"),
    Mutant(21, "kv-heads-not-split-over-tp", PP_RUNNER,
           find="            hf.num_key_value_heads // config.tensor_parallel_size, hf.head_dim,",
           replace="            hf.num_key_value_heads, hf.head_dim,",
           bug="each TP rank of a stage caches every KV head instead of its own share"),
    Mutant(21, "prefill-logits-of-every-token", PP_RUNNER,
           find="            if context.is_prefill:\n                hidden_states = hidden_states[context.cu_seqlens_q[1:].long() - 1]\n",
           replace="",
           bug="the last stage computes logits for every prompt token instead of each sequence's last one"),
    Mutant(21, "micro-batch-logits-reversed", PP_RUNNER,
           find="        return torch.cat(logits)\n",
           replace="        return torch.cat(logits[::-1])\n",
           bug="the micro-batches' logits are concatenated last first: tokens go to the wrong sequences"),
]
