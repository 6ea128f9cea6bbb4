"""``speculative_config``: what ``LLM(dir, speculative_config={...})`` accepts (lesson 19), checked up front.

Two shapes, as in vLLM:

    {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 1}
    {"model": "path/to/draft", "num_speculative_tokens": 4}        # method "draft_model" (implied)

Every mistake is a ValueError (FileNotFoundError for a missing draft folder) that names the
field and points to the lesson README's section.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

#: Where the options are explained, for every error about them.
SPEC_README = "see exercises/lesson19/README.md, 'Configuring speculation'"

METHODS = ("ngram", "draft_model")
_KEYS = {"method", "num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min", "model"}


@dataclass(frozen=True)
class SpeculativeConfig:
    """The checked settings.

    method:                 "ngram" (prompt lookup, no extra model) or "draft_model".
    num_speculative_tokens: k, the most tokens proposed per sequence and step (>= 1).
    prompt_lookup_max/min:  n-gram sizes tried, longest first (ngram only).
    model:                  the draft checkpoint folder (draft_model only).
    """

    method: str
    num_speculative_tokens: int
    prompt_lookup_max: int = 0
    prompt_lookup_min: int = 0
    model: str | None = None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_speculative_config(raw, engine_config) -> SpeculativeConfig | None:
    """Check ``raw`` (a dict, a SpeculativeConfig or None) against the target engine's ``engine_config``."""
    if raw is None or isinstance(raw, SpeculativeConfig):
        config = raw
    else:
        config = _from_dict(raw)
    if config is not None:
        _check_engine(engine_config)
        if config.method == "draft_model":
            _check_draft(config.model, engine_config)
    return config


def _fail(message: str):
    raise ValueError(f"Invalid speculative_config: {message} ({SPEC_README})")


def _from_dict(raw) -> SpeculativeConfig:
    if not isinstance(raw, dict):
        _fail(f"expected a dict such as {{'method': 'ngram', 'num_speculative_tokens': 4}}, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        _fail(f"unknown key(s) {unknown}; valid keys: {sorted(_KEYS)}")
    method = raw.get("method", "draft_model" if "model" in raw else None)
    if method == "draft":
        method = "draft_model"
    if method not in METHODS:
        _fail(f"method must be one of {list(METHODS)} (or give 'model' for a draft model), got {method!r}")
    k = raw.get("num_speculative_tokens")
    if not _is_int(k) or k < 1:
        _fail(f"num_speculative_tokens must be an integer >= 1, got {k!r}")
    if method == "ngram":
        if raw.get("model") is not None:
            _fail("method 'ngram' takes no 'model'")
        high = raw.get("prompt_lookup_max", 4)
        low = raw.get("prompt_lookup_min", 1)
        if not _is_int(low) or low < 1:
            _fail(f"prompt_lookup_min must be an integer >= 1, got {low!r}")
        if not _is_int(high) or high < low:
            _fail(f"prompt_lookup_max must be an integer >= prompt_lookup_min ({low}), got {high!r}")
        return SpeculativeConfig("ngram", k, prompt_lookup_max=high, prompt_lookup_min=low)
    if "prompt_lookup_max" in raw or "prompt_lookup_min" in raw:
        _fail("prompt_lookup_max / prompt_lookup_min belong to method 'ngram', not to a draft model")
    model = raw.get("model")
    if not isinstance(model, (str, Path)) or not str(model):
        _fail(f"a draft model needs 'model': the folder of a Qwen3 checkpoint, got {model!r}")
    return SpeculativeConfig("draft_model", k, model=str(model))


def _check_engine(engine_config) -> None:
    """Speculation runs in the synchronous, single-process engine loop only."""
    if engine_config.tensor_parallel_size != 1:
        _fail(f"speculative decoding runs on one GPU; tensor_parallel_size is {engine_config.tensor_parallel_size}")
    if getattr(engine_config, "pipeline_parallel_size", 1) != 1:
        _fail("speculative decoding does not run with pipeline parallelism (pipeline_parallel_size > 1)")
    if getattr(engine_config, "async_scheduling", False):
        _fail("speculative decoding runs with the synchronous engine loop only: pass async_scheduling=False")


def _check_draft(model: str, engine_config) -> None:
    """The draft must be a checkpoint with the target's vocabulary and tokenizer."""
    from aios.utils.hf_config import load_model_config

    path = Path(model)
    if not path.is_dir():
        raise FileNotFoundError(f"the draft model folder {model!r} does not exist ({SPEC_README}); make one with "
                                "`python -m aios make-model tiny ./models/draft`")
    draft = load_model_config(path)
    target = engine_config.hf_config
    if draft.vocab_size != target.vocab_size:
        _fail(f"the draft's vocab_size ({draft.vocab_size}) differs from the target's ({target.vocab_size}): "
              "both models must share one vocabulary")
    if _tokenizer_vocab(path) != _tokenizer_vocab(Path(engine_config.model)):
        _fail("the draft's tokenizer differs from the target's: both models must share one tokenizer")
    if draft.max_position_embeddings < engine_config.max_model_len:
        _fail(f"the draft handles {draft.max_position_embeddings} positions, fewer than max_model_len "
              f"({engine_config.max_model_len}): lower max_model_len")


def _tokenizer_vocab(folder: Path) -> dict:
    """token -> id of a checkpoint's tokenizer.json (the model section's vocabulary and the added tokens)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder)).get_vocab()
    data = json.loads(path.read_text(encoding="utf-8"))
    vocab = dict(data.get("model", {}).get("vocab", {}))
    vocab.update({token["content"]: token["id"] for token in data.get("added_tokens", [])})
    return vocab


def draft_memory_bytes(engine_config, spec: SpeculativeConfig) -> tuple[int, int]:
    """(bytes of one KV block of the draft, bytes of the draft's weights): what the target's KV cache must leave."""
    from aios.utils.hf_config import load_model_config

    if spec is None or spec.method != "draft_model":
        return 0, 0
    hf = load_model_config(spec.model)
    element = engine_config.dtype.itemsize
    block = 2 * hf.num_hidden_layers * engine_config.kvcache_block_size * hf.num_key_value_heads * hf.head_dim
    attention = hf.hidden_size * hf.head_dim * (2 * hf.num_attention_heads + 2 * hf.num_key_value_heads)
    layer = attention + 3 * hf.hidden_size * hf.intermediate_size
    embeddings = hf.vocab_size * hf.hidden_size * (1 if hf.tie_word_embeddings else 2)
    return block * element, (hf.num_hidden_layers * layer + embeddings) * element
