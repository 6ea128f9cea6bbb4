"""Read a checkpoint's config.json into a plain namespace with the fields the engine uses."""

import json
from pathlib import Path
from types import SimpleNamespace

import torch

from aios.utils.moe_config import moe_config_fields

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_model_config(model_dir: str | Path) -> SimpleNamespace:
    """Parse ``model_dir/config.json`` of a Qwen3 checkpoint.

    Raises FileNotFoundError with a clear message when the directory or file is missing.
    """
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"No Qwen3 checkpoint at {model_dir!s}: {path.name} is missing. "
            "Make one with `python -m aios make-model tiny ./models/tiny` or point to a downloaded Qwen3 directory."
        )
    raw = json.loads(path.read_text())
    rope = raw.get("rope_parameters") or {}
    num_heads = raw["num_attention_heads"]
    return SimpleNamespace(
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        intermediate_size=raw["intermediate_size"],
        num_hidden_layers=raw["num_hidden_layers"],
        num_attention_heads=num_heads,
        num_key_value_heads=raw.get("num_key_value_heads", num_heads),
        head_dim=raw.get("head_dim") or raw["hidden_size"] // num_heads,
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        rope_theta=raw.get("rope_theta", rope.get("rope_theta", 1_000_000.0)),
        max_position_embeddings=raw.get("max_position_embeddings", 40960),
        tie_word_embeddings=raw.get("tie_word_embeddings", False),
        attention_bias=raw.get("attention_bias", False),
        torch_dtype=_DTYPES.get(raw.get("torch_dtype") or raw.get("dtype") or "bfloat16", torch.bfloat16),
        eos_token_id=raw.get("eos_token_id"),
        **moe_config_fields(raw),  # lesson 20: Qwen3-MoE's fields (and architectures / model_type)
    )
