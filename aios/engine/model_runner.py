"""The model runner: owns the model and the paged KV cache, turns a batch of sequences into next tokens.

One step = build the flat batch and its Context (lesson 7), run the model once,
take each sequence's last hidden state, compute logits, sample.
"""

import math

import torch

from aios.config import Config
from aios.engine.block_manager import slot_mapping
from aios.engine.distributed import min_over_ranks
from aios.engine.sequence import Sequence
from aios.layers.paged_attention import PagedKVCache
from aios.layers.sampler import Sampler, greedy_sample
from aios.utils.context import Context, using_context
from aios.utils.loader import load_qwen3

CPU_KV_CACHE_BYTES = 2 * 1024**3


def kv_block_bytes(hf_config, block_size: int, dtype: torch.dtype) -> int:
    """Bytes one KV block takes across all layers: K and V, block_size slots, every KV head."""
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * hf_config.num_hidden_layers * block_size * hf_config.num_key_value_heads * hf_config.head_dim * element


def default_num_kvcache_blocks(config: Config) -> int:
    """How many blocks fit: on a GPU, what ``gpu_memory_utilization`` leaves after weights and
    an activation reserve; on the CPU, enough for every sequence at full length, within 2 GiB."""
    # With tensor parallelism each rank caches only its share of the KV heads.
    block_bytes = kv_block_bytes(config.hf_config, config.kvcache_block_size, config.dtype)
    block_bytes //= config.tensor_parallel_size
    per_seq = math.ceil(config.max_model_len / config.kvcache_block_size)
    if config.device == "cpu":
        return max(1, min(config.max_num_seqs * per_seq, CPU_KV_CACHE_BYTES // block_bytes))
    free, total = torch.cuda.mem_get_info()
    hf = config.hf_config
    activation_reserve = config.max_num_batched_tokens * (hf.hidden_size * 8 + hf.intermediate_size * 6) * 2
    activation_reserve += config.max_num_seqs * hf.vocab_size * 4 * 3
    budget = total * config.gpu_memory_utilization - (total - free) - activation_reserve
    blocks = int(budget // block_bytes)
    if blocks < per_seq:
        raise RuntimeError(
            f"Only {blocks} KV-cache blocks fit in GPU memory; one full-length sequence needs {per_seq}. "
            "Lower max_model_len or max_num_batched_tokens, or raise gpu_memory_utilization."
        )
    return blocks


class ModelRunner:
    """Loads the model on ``config.device`` and allocates the paged KV cache."""

    def __init__(self, config: Config):
        self.config = config
        self.block_size = config.kvcache_block_size
        self.device = torch.device(config.device)
        self.model = load_qwen3(
            config.model, config.dtype, config.device, config.load_format,
            fuse_residual_norm=True, fused_layers=config.fused_layers,
        )
        hf = config.hf_config
        if config.num_kvcache_blocks <= 0:
            # Tensor-parallel ranks must agree on the block count: the driver's scheduler hands out block ids.
            config.num_kvcache_blocks = min_over_ranks(default_num_kvcache_blocks(config))
        self.kv_cache = PagedKVCache(
            hf.num_hidden_layers, config.num_kvcache_blocks, self.block_size,
            hf.num_key_value_heads // config.tensor_parallel_size,
            hf.head_dim, config.dtype, config.device, backend=config.attention_backend,
        )
        self.sampler = Sampler()

    def _tensor(self, values, dtype=torch.int64) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=self.device)

    def _block_tables(self, seqs: list[Sequence]) -> torch.Tensor:
        """[num_seqs, max_blocks] block ids, padded with -1."""
        width = max(len(seq.block_table) for seq in seqs)
        return self._tensor([seq.block_table + [-1] * (width - len(seq.block_table)) for seq in seqs], torch.int32)

    def prepare_prefill(self, seqs: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor, Context]:
        """Pack the uncached tokens of every sequence into one flat batch.

        Returns (input_ids [tokens], positions [tokens], context) where the context holds
        cu_seqlens_q, context_lens, slot_mapping and block_tables for the batch.
        """
        # Hint: a sequence's new tokens start at seq.num_cached_tokens (0 unless prefix caching hit).
        raise NotImplementedError("Lesson 7: implement ModelRunner.prepare_prefill in aios/engine/model_runner.py — see exercises/lesson07/README.md, 'What to implement'")

    def prepare_decode(self, seqs: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor, Context]:
        """One token per sequence: its newest token, at position len(seq) - 1."""
        raise NotImplementedError("Lesson 7: implement ModelRunner.prepare_decode in aios/engine/model_runner.py — see exercises/lesson07/README.md, 'What to implement'")

    @torch.inference_mode()
    def run_model(self, input_ids: torch.Tensor, positions: torch.Tensor, context: Context) -> torch.Tensor:
        """Forward the flat batch; returns logits [num_seqs, vocab] of each sequence's last token."""
        with using_context(context):
            hidden = self.model(input_ids, positions)
        last = context.cu_seqlens_q[1:].long() - 1
        return self.model.compute_logits(hidden[last])

    def sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        """Next token per sequence: argmax when every request is greedy, else the sampler."""
        if all(seq.sampling_params.is_greedy for seq in seqs):
            return greedy_sample(logits).tolist()
        temperatures = torch.tensor([seq.sampling_params.temperature for seq in seqs], device=logits.device)
        return self.sampler(logits, temperatures).tolist()

    def run(self, seqs: list[Sequence], is_prefill: bool) -> list[int]:
        """One engine step for ``seqs``: returns one new token id per sequence."""
        prepare = self.prepare_prefill if is_prefill else self.prepare_decode
        logits = self.run_model(*prepare(seqs))
        if logits is None:  # a tensor-parallel worker: only the driver (rank 0) gets logits and samples
            return []
        return self.sample(logits, seqs)
