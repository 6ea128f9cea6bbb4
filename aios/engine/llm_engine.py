"""The engine loop: tokenizer in, scheduler and model runner in the middle, text out."""

import gc
import json
import math
from pathlib import Path

import torch

from aios.config import Config
from aios.engine.async_loop import AsyncLoop
from aios.engine.block_manager import BlockManager
from aios.engine.tp_runner import create_model_runner
from aios.engine.scheduler import Scheduler
from aios.engine.sequence import Sequence
from aios.layers.sampler import sampling_tensors
from aios.sampling_params import SamplingParams
from aios.spec.decoding import make_speculator, request_spec_stats


class RequestError(ValueError):
    """A request the engine cannot serve (too long, empty, never fits in the KV cache).

    ``param`` names the request field at fault ("prompt", "top_k", ...), for the server's error reply.
    """

    def __init__(self, message: str, param: str = "prompt"):
        super().__init__(message)
        self.param = param


def load_tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def eos_token_ids(model_dir: str, tokenizer) -> set[int]:
    """Every id that ends a generation: the tokenizer's EOS and generation_config.json's eos_token_id(s)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    path = Path(model_dir) / "generation_config.json"
    if path.is_file():
        value = json.loads(path.read_text()).get("eos_token_id")
        ids.update(value if isinstance(value, list) else [value] if value is not None else [])
    return ids


class ShutDownRunner:
    """Stands in for the model runner after ``LLMEngine.shutdown``: any use says why it cannot work."""

    def __getattr__(self, name):
        raise RuntimeError("this engine has been shut down (shutdown() gave back its GPU memory): build a new LLM")


def release_device_memory() -> None:
    """Collect unreachable engines' tensors and return cached CUDA blocks, for the next engine to size its KV cache."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class LLMEngine:
    """Owns the tokenizer, the scheduler and the model runner; ``step`` advances every request by one step."""

    def __init__(self, model: str, **options):
        self.config = Config.from_options(model, **options)
        self.tokenizer = load_tokenizer(self.config.model)
        self.eos_token_ids = eos_token_ids(self.config.model, self.tokenizer)
        self.model_runner = create_model_runner(self.config)
        self.block_manager = BlockManager(
            self.config.num_kvcache_blocks, self.config.kvcache_block_size, self.config.enable_prefix_caching
        )
        self.scheduler = Scheduler(self.config, self.block_manager, self.eos_token_ids)
        # Lesson 17: the overlapped loop (None: the synchronous one below).
        self.async_loop = AsyncLoop(self) if self.config.async_scheduling else None
        # Lesson 19: speculative decoding (None without speculative_config; a draft model loads here).
        self.speculator = make_speculator(self.config)

    @property
    def max_request_len(self) -> int:
        """The longest a request (prompt + completion) can grow: max_model_len, or less when the whole
        KV cache holds fewer tokens (the last generated token needs no slot, see ``check_request``)."""
        return min(self.config.max_model_len, self.block_manager.num_blocks * self.config.kvcache_block_size + 1)

    def tokenize(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        return list(prompt)

    def check_request(self, token_ids: list[int], params: SamplingParams) -> None:
        """Raise RequestError if the request could never be served."""
        if not isinstance(params, SamplingParams):
            raise TypeError(f"sampling parameters must be a SamplingParams, got {type(params).__name__}")
        limit = self.config.max_model_len
        if not token_ids:
            raise RequestError("the prompt is empty: give at least one token")
        if len(token_ids) >= limit:
            raise RequestError(
                f"the prompt has {len(token_ids)} tokens; max_model_len is {limit}, "
                f"so prompts may have at most {limit - 1}"
            )
        vocab = self.config.hf_config.vocab_size
        bad = [t for t in token_ids if not isinstance(t, int) or not 0 <= t < vocab]
        if bad:
            raise RequestError(f"token id(s) {bad[:5]} are outside the vocabulary [0, {vocab})")
        if params.top_k > vocab:
            raise RequestError(f"top_k is {params.top_k}, but the vocabulary has {vocab} tokens: use at most "
                               f"{vocab}, or -1 for no limit", param="top_k")
        # The last generated token is never fed back, so it needs no cache slot.
        cached = min(len(token_ids) + params.max_tokens, limit) - 1
        blocks = math.ceil(cached / self.config.kvcache_block_size)
        if blocks > self.block_manager.num_blocks:
            raise RequestError(
                f"the request needs up to {cached} tokens in the KV cache = {blocks} blocks of "
                f"{self.config.kvcache_block_size}, but the whole cache has {self.block_manager.num_blocks}: "
                "lower max_tokens or give the engine more KV-cache blocks (num_kvcache_blocks)"
            )

    def add_request(self, prompt: str | list[int], sampling_params: SamplingParams | None = None,
                    priority: int = 0) -> Sequence:
        """Validate and queue one request; returns its Sequence.

        priority: lower values are admitted first (vLLM's convention); equal priorities keep arrival order.
        """
        params = sampling_params or SamplingParams()
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise RequestError(f"priority must be an integer, got {priority!r}", param="priority")
        token_ids = self.tokenize(prompt)
        self.check_request(token_ids, params)
        seq = Sequence(token_ids, params, self.config.kvcache_block_size, priority=priority)
        self.scheduler.add(seq)
        return seq

    def request_fault(self, seq: Sequence) -> str | None:
        """Why ``seq`` on its own cannot be stepped, or None if nothing is wrong with it.

        After a step raised, the server asks this of every sequence in the batch: a request whose
        settings fail the engine's checks, or cannot be turned into the sampler's tensors, is at
        fault, and only it needs to end; the others go on.
        """
        try:
            self.check_request(seq.token_ids[: seq.num_prompt_tokens], seq.sampling_params)
            sampling_tensors([seq.sampling_params], [seq.num_completion_tokens], "cpu")
        except Exception as exc:  # noqa: BLE001 - any failure here is this request's own
            return f"{type(exc).__name__}: {exc}"
        return None

    def forget_failed_step(self) -> None:
        """After ``step`` raised: keep the prefix cache from finding blocks that step may not have written.

        Call it before the running sequences are requeued or aborted (they still hold their blocks).
        """
        if self.async_loop is not None:
            self.async_loop.discard()  # lesson 17: drop the step in flight and its placeholders
        for seq in self.scheduler.running:
            self.block_manager.forget_computed_blocks(seq)

    def requeue_running(self) -> None:
        """Send every running sequence back to the waiting queue (its blocks freed, recomputed when re-admitted)."""
        self.scheduler.requeue_running()

    def step(self) -> tuple[list[Sequence], int]:
        """Run one scheduled batch. Returns (sequences that finished, tokens processed: positive for prefill, negative for decode)."""
        if getattr(self, "speculator", None) is not None:
            return self.speculator.step(self)  # lesson 19: propose, verify, accept / roll back
        if self.async_loop is not None:
            return self.async_loop.step()  # lesson 17: launches the next step, returns the previous one's finished
        if self.config.enable_chunked_prefill:
            return self.step_chunked()
        raise NotImplementedError("Lesson 8: implement LLMEngine.step in aios/engine/llm_engine.py — see exercises/lesson08/README.md, 'What to implement'")

    def step_chunked(self) -> tuple[list[Sequence], int]:
        """One token-budget step (lesson 16): decodes and prefill chunks in one forward pass.

        A step of decodes only runs as lesson 8's decode step (``run(seqs, False)``: CUDA graphs
        apply); any other runs every chunk as a prefill (``run(chunks, True)``, eager).
        Returns (sequences that finished, tokens processed: the chunks' tokens when the step
        prefilled anything, minus the number of sequences for a decode-only step).
        """
        raise NotImplementedError("Lesson 16: implement LLMEngine.step_chunked in aios/engine/llm_engine.py — see exercises/lesson16/README.md, 'What to implement'")

    def shutdown(self) -> None:
        """Stop the tensor-parallel workers, if any (lesson 14), and give back the weights, KV cache
        and CUDA graphs, so that the next engine in this process has the GPU's memory. Safe to call twice;
        the engine cannot generate afterwards."""
        if isinstance(self.model_runner, ShutDownRunner):
            return
        stop = getattr(self.model_runner, "shutdown", None)
        if stop is not None:
            stop()
        self.model_runner = ShutDownRunner()
        self.speculator = None  # lesson 19: and the draft model's weights and cache
        release_device_memory()

    def is_finished(self) -> bool:
        return self.scheduler.is_finished()

    def abort(self, seq_id: int) -> bool:
        """Cancel request ``seq_id`` (waiting or running) and free its KV blocks; False if it is not in the engine."""
        return self.scheduler.abort(seq_id) is not None

    def output(self, seq: Sequence) -> dict:
        """The user-facing result of a finished sequence."""
        ids = seq.completion_token_ids
        return {
            "text": self.tokenizer.decode(ids, skip_special_tokens=True),
            "token_ids": ids,
            "finish_reason": seq.finish_reason,
            **({"spec_decode": request_spec_stats(seq)} if getattr(self, "speculator", None) else {}),
        }

    def speculative_stats(self) -> dict | None:
        """Lesson 19: acceptance since the engine started (proposed, accepted, acceptance rate, mean accepted
        length; see aios/spec/decoding.py's SpecStats), or None without speculative decoding."""
        return None if getattr(self, "speculator", None) is None else self.speculator.stats.as_dict()

    def generate(self, prompts, sampling_params=None, use_tqdm: bool = True) -> list[dict]:
        """Generate for every prompt; returns one dict per prompt, in prompt order.

        prompts: a list of strings or of token-id lists. sampling_params: one SamplingParams
        for all, or a list with one per prompt. Each result has "text", "token_ids" (the
        generated part) and "finish_reason".
        """
        if isinstance(prompts, (str, tuple)) or (prompts and isinstance(prompts[0], int)):
            raise TypeError("prompts must be a list of strings or a list of token-id lists")
        if not prompts:
            raise RequestError("generate() got an empty list of prompts")
        if not isinstance(sampling_params, list):
            sampling_params = [sampling_params] * len(prompts)
        if len(sampling_params) != len(prompts):
            raise ValueError(f"{len(sampling_params)} SamplingParams for {len(prompts)} prompts")
        requests = [(self.tokenize(p), sp or SamplingParams()) for p, sp in zip(prompts, sampling_params)]
        for i, (ids, sp) in enumerate(requests):
            try:
                self.check_request(ids, sp)
            except RequestError as error:
                raise RequestError(f"prompt {i}: {error}") from None
        # Hint: step until the scheduler is empty; remember each finished sequence's result by its seq_id.
        raise NotImplementedError("Lesson 8: implement LLMEngine.generate in aios/engine/llm_engine.py — see exercises/lesson08/README.md, 'What to implement'")


def progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="Generating", unit="req", disable=not enabled, dynamic_ncols=True)
