"""The model runner: owns the model and the paged KV cache, turns a batch of sequences into next tokens.

One step = build the flat batch and its Context (lesson 7), run the model once,
take each sequence's last hidden state, compute logits, sample.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch

from aios.config import Config
from aios.engine.block_manager import slot_mapping
from aios.engine.distributed import min_over_ranks
from aios.engine.sequence import Sequence
from aios.layers.paged_attention import PagedKVCache
from aios.layers.sampler import Sampler, greedy_sample, sampling_tensors
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
    block_bytes = kv_block_bytes(config.hf_config, config.kvcache_block_size, kv_cache_dtype(config))
    block_bytes //= config.tensor_parallel_size
    block_bytes += getattr(config, "draft_kv_block_bytes", 0)  # lesson 19: a draft model's cache has as many blocks
    per_seq = math.ceil(config.max_model_len / config.kvcache_block_size)
    if config.device == "cpu":
        return max(1, min(config.max_num_seqs * per_seq, CPU_KV_CACHE_BYTES // block_bytes))
    free, total = torch.cuda.mem_get_info()
    hf = config.hf_config
    activation_reserve = config.max_num_batched_tokens * (hf.hidden_size * 8 + hf.intermediate_size * 6) * 2
    activation_reserve += config.max_num_seqs * hf.vocab_size * 4 * 3
    budget = total * config.gpu_memory_utilization - (total - free) - activation_reserve
    budget -= getattr(config, "draft_weight_bytes", 0)  # lesson 19: loaded after the target's cache is sized
    blocks = int(budget // block_bytes)
    if blocks < per_seq:
        raise RuntimeError(
            f"Only {blocks} KV-cache blocks fit in GPU memory; one full-length sequence needs {per_seq}. "
            "Lower max_model_len or max_num_batched_tokens, or raise gpu_memory_utilization."
        )
    return blocks


def kv_cache_dtype(config: Config) -> torch.dtype:
    """The KV cache's element type: the model's dtype, or float8 e4m3 with kv_cache_dtype="fp8" (lesson 18)."""
    return torch.float8_e4m3fn if getattr(config, "kv_cache_dtype", "auto") == "fp8" else config.dtype


def kv_cache_scales(config: Config) -> tuple[list[float], list[float]] | None:
    """Lesson 18: an FP8 cache's per-layer (k_scales, v_scales), from the checkpoint where it ships them, else 1.0."""
    if getattr(config, "kv_cache_dtype", "auto") != "fp8" or config.load_format == "dummy":
        return None
    from aios.layers.fp8_kv_cache import read_kv_scales

    return read_kv_scales(config.model, config.hf_config.num_hidden_layers)


class ModelRunner:
    """Loads the model on ``config.device`` and allocates the paged KV cache."""

    def __init__(self, config: Config):
        self.config = config
        self.block_size = config.kvcache_block_size
        self.device = torch.device(config.device)
        self.model = load_qwen3(
            config.model, config.dtype, config.device, config.load_format,
            fuse_residual_norm=True, fused_layers=config.fused_layers, quantization=config.quantization,
        )
        hf = config.hf_config
        if config.num_kvcache_blocks <= 0:
            # Tensor-parallel ranks must agree on the block count: the driver's scheduler hands out block ids.
            config.num_kvcache_blocks = min_over_ranks(default_num_kvcache_blocks(config))
        self.kv_cache = PagedKVCache(
            hf.num_hidden_layers, config.num_kvcache_blocks, self.block_size,
            hf.num_key_value_heads // config.tensor_parallel_size,
            hf.head_dim, kv_cache_dtype(config), config.device, backend=config.attention_backend,
            kv_scales=kv_cache_scales(config),
        )
        self.sampler = Sampler()
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.graph_sizes: list[int] = []
        self.graph_inputs: DecodeGraphInputs | None = None
        if not config.enforce_eager:
            if config.compile_elementwise:
                compile_elementwise_layers(self.model)
            self.capture_decode_graphs()

    def _tensor(self, values, dtype=torch.int64) -> torch.Tensor:
        """A host list as a tensor on the device; on a GPU through pinned memory, without waiting for the copy."""
        if self.device.type != "cuda":
            return torch.tensor(values, dtype=dtype, device=self.device)
        return torch.tensor(values, dtype=dtype, pin_memory=True).to(self.device, non_blocking=True)

    def _block_tables(self, seqs: list[Sequence]) -> torch.Tensor:
        """[num_seqs, max_blocks] block ids, padded with -1."""
        width = max(len(seq.block_table) for seq in seqs)
        table = np.full((len(seqs), width), -1, dtype=np.int32)
        for row, seq in enumerate(seqs):
            table[row, : len(seq.block_table)] = seq.block_table
        host = torch.from_numpy(table)
        if self.device.type != "cuda":
            return host.to(self.device)
        return host.pin_memory().to(self.device, non_blocking=True)

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
        """Forward the flat batch; returns logits [num_seqs, vocab] of each sequence's last token.

        Decode steps replay a captured CUDA graph when one fits (lesson 11), else run eagerly.
        """
        hidden = None
        if not context.is_prefill and self.graphs:
            hidden = self.run_decode_graph(input_ids, positions, context)
        if hidden is None:
            with using_context(context):
                hidden = self.model(input_ids, positions)
        if context.is_prefill:
            hidden = hidden[context.cu_seqlens_q[1:].long() - 1]
        return self.model.compute_logits(hidden)

    # ------------------------------------------------------------------ CUDA graphs (lesson 11)

    @torch.inference_mode()
    def capture_decode_graphs(self) -> None:
        """Record the decode forward once per size of ``graph_batch_sizes`` as a CUDA graph.

        Every graph reads the same static buffers (``self.graph_inputs``); the largest is
        captured first and the others share its memory pool. The attention kernels size
        their splits for ``max_model_len`` keys, so one graph serves every context length.
        """
        # Hint: run each size once before capturing it (kernels compile, allocations settle),
        # Hint: then record it under torch.cuda.graph(graph, pool=...) with the Context set.
        raise NotImplementedError("Lesson 11: implement ModelRunner.capture_decode_graphs in aios/engine/model_runner.py — see exercises/lesson11/README.md, 'What to implement'")

    def release_cuda_graphs(self) -> None:
        """Drop the captured decode graphs and their static buffers; later decode steps run eagerly.

        A tensor-parallel engine calls this before leaving its NCCL group: the graphs hold
        the group's collectives, and NCCL waits for them before it frees a communicator.
        """
        if not self.graphs:
            return
        torch.cuda.synchronize()
        self.graphs.clear()
        self.graph_sizes = []
        self.graph_inputs = None
        torch.cuda.empty_cache()

    def _graph_forward(self, batch_size: int) -> None:
        """The decode forward a graph records: static inputs in, static hidden states out."""
        inputs = self.graph_inputs
        inputs.hidden_states[:batch_size] = self.model(inputs.input_ids[:batch_size], inputs.positions[:batch_size])

    def run_decode_graph(self, input_ids: torch.Tensor, positions: torch.Tensor, context: Context):
        """Replay the smallest captured graph that holds this decode step.

        Returns the hidden states [num_seqs, hidden] (a view of the static output buffer),
        or None when the step has more sequences than the largest graph (run it eagerly).
        """
        raise NotImplementedError("Lesson 11: implement ModelRunner.run_decode_graph in aios/engine/model_runner.py — see exercises/lesson11/README.md, 'What to implement'")

    def sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        """Next token per sequence: argmax when every request is greedy, else the sampler."""
        if all(seq.sampling_params.is_greedy for seq in seqs):
            return greedy_sample(logits).tolist()
        params = [seq.sampling_params for seq in seqs]
        steps = [seq.num_completion_tokens for seq in seqs]
        return self.sampler(logits, **sampling_tensors(params, steps, logits.device)).tolist()

    def run(self, seqs: list[Sequence], is_prefill: bool) -> list[int]:
        """One engine step for ``seqs``: returns one new token id per sequence."""
        prepare = self.prepare_prefill if is_prefill else self.prepare_decode
        logits = self.run_model(*prepare(seqs))
        if logits is None:  # a tensor-parallel worker: only the driver (rank 0) gets logits and samples
            return []
        return self.sample(logits, seqs)


# ---------------------------------------------------------------------- CUDA-graph helpers (lesson 11)


def graph_batch_sizes(max_num_seqs: int) -> list[int]:
    """Decode batch sizes to capture, ascending: 1, 2, 4, 8, then every multiple of 16 below
    ``max_num_seqs``, and ``max_num_seqs`` itself (the largest batch the scheduler forms)."""
    # Hint: small sizes are common at the end of a run; large ones only need to be close enough.
    raise NotImplementedError("Lesson 11: implement graph_batch_sizes in aios/engine/model_runner.py — see exercises/lesson11/README.md, 'What to implement'")


def graph_batch_size_for(num_seqs: int, sizes: list[int]) -> int | None:
    """The smallest captured size (``sizes`` ascending) that holds ``num_seqs`` sequences; None if none does."""
    raise NotImplementedError("Lesson 11: implement graph_batch_size_for in aios/engine/model_runner.py — see exercises/lesson11/README.md, 'What to implement'")


def compile_elementwise_layers(model: torch.nn.Module) -> int:
    """Fuse the small elementwise layers with torch.compile before the decode graphs are captured.

    A graph removes the CPU's launch cost, not the kernels: unfused, every RMSNorm, RoPE and
    SiLU-and-mul is 5-12 tiny kernels, about 45 per layer, each a few microseconds even when
    replayed. Compiled (shapes dynamic, so one compilation serves every batch size) each becomes
    one or two Triton kernels. Returns how many modules were compiled.
    """
    from aios.layers.activation import SiluAndMul
    from aios.layers.layernorm import RMSNorm
    from aios.layers.rotary_embedding import RotaryEmbedding

    compiled = 0
    for module in model.modules():
        if isinstance(module, (RMSNorm, RotaryEmbedding, SiluAndMul)):
            module.compile(dynamic=True)
            compiled += 1
    return compiled


@dataclass
class DecodeGraphInputs:
    """The static tensors captured decode graphs read and write; a replay changes only their contents.

    input_ids, positions, slot_mapping: [max_batch] int64; context_lens: [max_batch] int32;
    block_tables: [max_batch, max_blocks_per_seq] int32; cu_seqlens_q: [max_batch + 1] int32
    (0, 1, 2, ...: one query per sequence); hidden_states: [max_batch, hidden] the model's output.
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    slot_mapping: torch.Tensor
    context_lens: torch.Tensor
    block_tables: torch.Tensor
    cu_seqlens_q: torch.Tensor
    hidden_states: torch.Tensor

    @classmethod
    def allocate(cls, max_batch: int, max_blocks_per_seq: int, hidden_size: int, dtype, device) -> "DecodeGraphInputs":
        """Buffers for batches up to ``max_batch``, filled as padding (slot -1, context length 0)."""
        index = dict(dtype=torch.int64, device=device)
        return cls(
            input_ids=torch.zeros(max_batch, **index),
            positions=torch.zeros(max_batch, **index),
            slot_mapping=torch.full((max_batch,), -1, **index),
            context_lens=torch.zeros(max_batch, dtype=torch.int32, device=device),
            block_tables=torch.full((max_batch, max_blocks_per_seq), -1, dtype=torch.int32, device=device),
            cu_seqlens_q=torch.arange(max_batch + 1, dtype=torch.int32, device=device),
            hidden_states=torch.zeros(max_batch, hidden_size, dtype=dtype, device=device),
        )

    def context(self, kv_cache, batch_size: int, max_context_len: int) -> Context:
        """The decode Context of a graph of ``batch_size``: views of the buffers' first rows."""
        return Context(
            kv_cache=kv_cache,
            positions=self.positions[:batch_size],
            is_prefill=False,
            cu_seqlens_q=self.cu_seqlens_q[: batch_size + 1],
            context_lens=self.context_lens[:batch_size],
            slot_mapping=self.slot_mapping[:batch_size],
            block_tables=self.block_tables[:batch_size],
            max_seqlen_q=1,
            max_seqlen_k=max_context_len,
        )


def fill_graph_inputs(
    inputs: DecodeGraphInputs, input_ids: torch.Tensor, positions: torch.Tensor, context: Context, batch_size: int
) -> None:
    """Copy one eager decode step (``prepare_decode``'s output) into the first ``batch_size`` rows.

    Rows past the step's sequences are padding: token and position 0, slot -1 (the store
    kernel skips it) and context length 0 (attention reads nothing and returns zeros).
    """
    # Hint: only the block-table columns the step uses need copying: context_lens bounds every read.
    raise NotImplementedError("Lesson 11: implement fill_graph_inputs in aios/engine/model_runner.py — see exercises/lesson11/README.md, 'What to implement'")
