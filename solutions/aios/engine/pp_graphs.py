"""CUDA graphs for a pipeline stage's decode micro-batches (lesson 21 on top of lesson 11).

An eager decode step of a big model is bound by the host: every layer launches its kernels
one by one from Python, and a pipeline stage does that once per micro-batch. Lesson 11's
answer works per stage too. A stage's decode forward for a micro-batch of ``size``
sequences is recorded once as a CUDA graph over static buffers:

    first stage:   input_ids, positions ──► embed ─► layers[start:end] ─► hidden_out, residual_out
    middle stage:  hidden_in, residual_in ─────────► layers[start:end] ─► hidden_out, residual_out
    last stage:    hidden_in, residual_in ─────────► layers[start:end] ─► norm ─► hidden_out

The point-to-point transfers stay outside the graphs: a received micro-batch is copied into
``hidden_in`` / ``residual_in``, the graph is replayed, and a copy of ``hidden_out`` /
``residual_out`` is sent on (the next replay rewrites the buffers while the send may still
be reading). Prefill steps, and decode steps bigger than the largest graph, run eagerly
(``StageRunner.forward_step``).

Graphs are captured only for a stage without tensor parallelism: a graph that holds a TP
group's all-reduce must be released before that group is destroyed, which the pipeline's
shutdown does not do yet.
"""

import math

import torch

from aios.engine.model_runner import (
    DecodeGraphInputs,
    compile_elementwise_layers,
    fill_graph_inputs,
    graph_batch_size_for,
    graph_batch_sizes,
)
from aios.engine.pipeline import recv_activations, send_activations, split_micro_batches
from aios.utils.context import using_context


def stage_graphs_wanted(config) -> bool:
    """Capture decode graphs for a stage: on CUDA, not ``enforce_eager``, one TP rank per stage."""
    return (str(config.device).startswith("cuda") and not config.enforce_eager
            and config.tensor_parallel_size == 1)


class StageDecodeGraphs:
    """One stage's decode graphs, one per micro-batch size of ``graph_batch_sizes``, sharing one memory pool.

    Buffers: ``inputs`` (lesson 11's DecodeGraphInputs: ids, positions, slots, context lengths,
    block tables, and ``hidden_states`` [max_batch, hidden] as the output); ``hidden_in`` and
    ``residual_in`` [max_batch, hidden] (stages after the first); ``residual_out`` [max_batch,
    hidden] (stages before the last).
    """

    def __init__(self, runner):
        self.runner = runner
        config, stage = runner.config, runner.stage
        self.is_first, self.is_last = stage.is_first, stage.is_last
        self.pp_size = config.pipeline_parallel_size
        hidden = config.hf_config.hidden_size
        self.sizes = graph_batch_sizes(math.ceil(config.max_num_seqs / self.pp_size))
        largest = max(self.sizes)
        self.inputs = DecodeGraphInputs.allocate(largest, math.ceil(config.max_model_len / runner.block_size),
                                                 hidden, config.dtype, runner.device)
        buffer = dict(dtype=config.dtype, device=runner.device)
        self.hidden_in = None if self.is_first else torch.zeros(largest, hidden, **buffer)
        self.residual_in = None if self.is_first else torch.zeros(largest, hidden, **buffer)
        self.residual_out = None if self.is_last else torch.zeros(largest, hidden, **buffer)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}

    @torch.inference_mode()
    def capture(self) -> "StageDecodeGraphs":
        """Run each size once (kernels compile), then record it; the largest first, the rest share its pool."""
        config = self.runner.config
        if config.compile_elementwise:
            compile_elementwise_layers(self.runner.model)
        pool = None
        for size in reversed(self.sizes):
            graph = torch.cuda.CUDAGraph()
            with using_context(self.inputs.context(self.runner.kv_cache, size, config.max_model_len)):
                self._forward(size)
                torch.cuda.synchronize()
                with torch.cuda.graph(graph, pool=pool):
                    self._forward(size)
            pool = pool or graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize()
        return self

    def _forward(self, size: int) -> None:
        """What a graph records: the stage on the first ``size`` rows of the static buffers."""
        inputs = self.inputs
        hidden_in = None if self.is_first else self.hidden_in[:size]
        residual_in = None if self.is_first else self.residual_in[:size]
        hidden, residual = self.runner.model(inputs.positions[:size], inputs.input_ids[:size], hidden_in, residual_in)
        inputs.hidden_states[:size] = hidden
        if not self.is_last:
            self.residual_out[:size] = residual

    def fits(self, num_seqs: int) -> bool:
        """Whether every micro-batch of a ``num_seqs``-sequence decode step has a graph."""
        return math.ceil(num_seqs / self.pp_size) <= max(self.sizes)

    @torch.inference_mode()
    def forward_step(self, seqs) -> torch.Tensor | None:
        """A decode step through this stage, micro-batch by micro-batch, replaying graphs.

        Same contract as ``StageRunner.forward_step`` for decode: the logits [num_seqs, vocab]
        (float32) on the last stage, None elsewhere.
        """
        runner, layout = self.runner, self.runner.layout
        hidden_size, dtype = runner.config.hf_config.hidden_size, runner.config.dtype
        sends, logits = [], []
        for micro_batch in split_micro_batches(seqs, self.pp_size):
            input_ids, positions, context = runner.prepare_decode(micro_batch)
            count = len(micro_batch)
            size = graph_batch_size_for(count, self.sizes)
            fill_graph_inputs(self.inputs, input_ids, positions, context, size)
            if not self.is_first:
                hidden, residual = recv_activations(count, hidden_size, dtype, runner.device, layout.prev_rank)
                self.hidden_in[:count].copy_(hidden)
                self.residual_in[:count].copy_(residual)
            self.graphs[size].replay()
            if not self.is_last:
                sends += send_activations(self.inputs.hidden_states[:count].clone(),
                                          self.residual_out[:count].clone(), layout.next_rank)
                continue
            logits.append(runner.model.compute_logits(self.inputs.hidden_states[:count]))
        for work in sends:
            work.wait()
        if not logits or logits[0] is None:
            return None
        return torch.cat(logits)
