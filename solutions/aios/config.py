"""Engine configuration: one dataclass with every option ``LLM(model, **options)`` accepts."""

from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from aios.utils.hf_config import load_model_config

#: Where the token budget is explained, for the errors about it.
BUDGET_README = "see exercises/lesson16/README.md, 'The token budget'"

_DTYPE_NAMES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
                "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def features_up_to(lesson: int) -> dict:
    """Engine options that switch on exactly the mechanisms of lessons <= ``lesson``.

    Every later mechanism replaces an earlier one behind an option; tests of lesson N
    pass ``**features_up_to(N)`` so they never reach a later lesson's stubs.
    """
    return {
        "attention_backend": "triton" if lesson >= 9 else "torch",
        "fused_layers": lesson >= 10,
        "enforce_eager": lesson < 11,
        "enable_prefix_caching": lesson >= 13,
        "enable_chunked_prefill": lesson >= 16,
        "async_scheduling": lesson >= 17,
    }


@dataclass
class Config:
    """Everything the engine needs to know, with defaults for a single GPU (or the CPU).

    model:                  path of a Hugging Face-format Qwen3 checkpoint directory.
    max_num_seqs:           most sequences in one batch.
    max_num_batched_tokens: most tokens in one prefill batch; with chunked prefill, in any step (the token budget).
    max_model_len:          longest sequence (prompt + completion); capped by the checkpoint's.
    dtype:                  "auto" (the checkpoint's), "float32", "float16", "bfloat16" or a torch.dtype.
    device:                 "auto" (CUDA when available, else CPU), "cuda", "cpu".
    enforce_eager:          never use CUDA graphs (lesson 11); always true on the CPU and with attention_backend="torch".
    compile_elementwise:    with CUDA graphs, first fuse each RMSNorm, RoPE and SiLU-and-mul into one
                            kernel with torch.compile (lesson 11; fewer, larger kernels per graph).
    num_kvcache_blocks:     KV-cache size in blocks; -1 sizes it from free memory.
    kvcache_block_size:     token slots per KV-cache block.
    gpu_memory_utilization: share of GPU memory the engine may fill (weights + KV cache + activations).
    tensor_parallel_size:   GPUs to shard the model over (lesson 14).
    pipeline_parallel_size: stages the decoder layers are cut into, one group of tensor_parallel_size ranks
                            each (lesson 21; tensor_parallel_size x pipeline_parallel_size ranks in all).
    enable_prefix_caching:  reuse KV blocks of identical prompt prefixes (lesson 13).
    enable_chunked_prefill: token-budget steps that mix decodes with chunks of long prompts (lesson 16);
                            off: lesson 8's prefill-first steps.
    attention_backend:      "auto", "torch" (lessons 6-7) or "triton" (lesson 9).
    fused_layers:           fused QKV and gate/up projections (lesson 10).
    load_format:            "safetensors" (read the checkpoint) or "dummy" (random weights, for
                            benchmarks: throughput does not depend on weight values; needs only config.json
                            and the tokenizer files).
    quantization:           None, "int8", "int4" or "fp8" (lesson 18): quantize a float checkpoint's linear
                            layers at load time. A pre-quantized checkpoint (config.json's quantization_config)
                            loads as it is whatever this says (None or its own method).
    kv_cache_dtype:         "auto" (the model's dtype) or "fp8" (lesson 18: K and V in e4m3 with a scale per layer,
                            twice the tokens of bf16 per byte; the CPU or a GPU with FP8, compute capability >= 8.9).
    async_scheduling:       overlap the host with the GPU (lesson 17): True, False, or None (on for CUDA, off on
                            the CPU); tensor parallelism and speculative decoding run the synchronous loop.
    speculative_config:     None, or speculative decoding (lesson 19): {"method": "ngram", "num_speculative_tokens": k,
                            "prompt_lookup_max": 4, "prompt_lookup_min": 1} or {"model": DRAFT_DIR,
                            "num_speculative_tokens": k}; checked into a SpeculativeConfig (aios/spec/config.py).
    """

    model: str
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 16384
    max_model_len: int = 4096
    dtype: str | torch.dtype = "auto"
    device: str = "auto"
    enforce_eager: bool = False
    compile_elementwise: bool = True
    num_kvcache_blocks: int = -1
    kvcache_block_size: int = 16
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = False
    attention_backend: str = "auto"
    fused_layers: bool = True
    load_format: str = "safetensors"
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    async_scheduling: bool | None = None
    speculative_config: dict | None = None
    hf_config: object = field(default=None, repr=False)

    def __post_init__(self):
        self.model = str(self.model)
        if not Path(self.model).is_dir():
            raise FileNotFoundError(
                f"Model directory {self.model!r} does not exist. "
                "Make a test checkpoint with `python -m aios make-model tiny ./models/tiny`."
            )
        self.hf_config = load_model_config(self.model)
        self.device = resolve_device(self.device)
        self.dtype = resolve_dtype(self.dtype, self.hf_config.torch_dtype)
        self.max_model_len = min(self.max_model_len, self.hf_config.max_position_embeddings)
        if self.attention_backend == "auto":
            self.attention_backend = default_attention_backend(self.device)
        if self.device == "cpu" or self.attention_backend == "torch":
            # CUDA graphs need a GPU, and the torch backend reads context lengths on the host.
            self.enforce_eager = True
        self._validate()
        self._validate_quantization()
        self._validate_speculative()
        self._resolve_async_scheduling()

    def _resolve_async_scheduling(self):
        """Lesson 17: None becomes on for CUDA, off on the CPU; a bad value is an error pointing to the README."""
        from aios.engine.async_loop import resolve_async_scheduling

        ranks = self.tensor_parallel_size * getattr(self, "pipeline_parallel_size", 1)  # > 1: the synchronous loop
        self.async_scheduling = resolve_async_scheduling(
            self.async_scheduling, self.device, ranks, getattr(self, "speculative_config", None) is not None)

    def _validate_speculative(self):
        """Lesson 19: check speculative_config; a draft model's KV blocks and weights are kept out of the target's cache."""
        from aios.spec.config import draft_memory_bytes, parse_speculative_config

        self.speculative_config = parse_speculative_config(self.speculative_config, self)
        self.draft_kv_block_bytes, self.draft_weight_bytes = draft_memory_bytes(self, self.speculative_config)

    def _validate_quantization(self):
        """Lesson 18: unsupported quantization settings are clear errors, never wrong output."""
        from aios.layers.quantization import check_quantization_options

        self.quantization = check_quantization_options(self)

    def _validate(self):
        checks = [
            (self.max_num_seqs >= 1, f"max_num_seqs must be >= 1, got {self.max_num_seqs}"),
            (self.max_model_len >= 2, f"max_model_len must be >= 2, got {self.max_model_len}"),
            (self.max_num_batched_tokens >= 1,
             f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens} ({BUDGET_README})"),
            (self.enable_chunked_prefill or self.max_num_batched_tokens >= self.max_model_len,
             f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_model_len "
             f"({self.max_model_len}) so that any prompt fits in one prefill; or pass enable_chunked_prefill=True "
             f"to split long prompts into chunks ({BUDGET_README})"),
            (not self.enable_chunked_prefill or self.max_num_batched_tokens >= self.max_num_seqs,
             f"with enable_chunked_prefill, max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= "
             f"max_num_seqs ({self.max_num_seqs}) so that every running sequence decodes in every step: "
             f"lower max_num_seqs or raise the budget ({BUDGET_README})"),
            (self.kvcache_block_size >= 1, f"kvcache_block_size must be >= 1, got {self.kvcache_block_size}"),
            (0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization must be in (0, 1]"),
            (self.tensor_parallel_size >= 1, "tensor_parallel_size must be >= 1"),
            (self.pipeline_parallel_size >= 1, "pipeline_parallel_size must be >= 1 "
             "(see exercises/lesson21/README.md, 'Cutting the model into stages')"),
            (self.load_format in ("safetensors", "dummy"),
             f"load_format must be 'safetensors' or 'dummy', got {self.load_format!r}"),
            (self.attention_backend in ("torch", "triton"),
             f"attention_backend must be 'auto', 'torch' or 'triton', got {self.attention_backend!r}"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ValueError("Invalid engine options: " + "; ".join(problems))

    @classmethod
    def from_options(cls, model, **options) -> "Config":
        """Like ``Config(model, **options)`` but an unknown option is an error that lists the valid ones."""
        valid = {f.name for f in fields(cls)} - {"model", "hf_config"}
        unknown = sorted(set(options) - valid)
        if unknown:
            raise TypeError(f"Unknown engine option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(valid))}")
        return cls(model, **options)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but torch sees no CUDA GPU")
    return device


def default_attention_backend(device: str) -> str:
    """Lesson 9's Triton kernels ("triton") on a CUDA device when Triton imports, else "torch"."""
    if not device.startswith("cuda"):
        return "torch"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "torch"
    return "triton"


def resolve_dtype(dtype, checkpoint_dtype: torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return checkpoint_dtype
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPE_NAMES)}, got {dtype!r}")
    return _DTYPE_NAMES[dtype]
