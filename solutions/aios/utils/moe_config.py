"""Qwen3-MoE's config.json fields (lesson 20): read, defaulted and checked, without importing the model.

transformers' ``Qwen3MoeConfig`` defines them:

* ``num_experts`` (E) experts per sparse layer, ``num_experts_per_tok`` (k) of them per token;
* ``moe_intermediate_size``: each expert's SwiGLU width (``intermediate_size`` stays the
  width of the dense MLP of non-sparse layers);
* ``norm_topk_prob``: rescale a token's k routing weights to sum to 1;
* ``decoder_sparse_step`` and ``mlp_only_layers``: which layers are sparse.
"""

from types import SimpleNamespace

README = "exercises/lesson20/README.md"

ARCHITECTURE = "Qwen3MoeForCausalLM"
MODEL_TYPE = "qwen3_moe"


def is_moe_config(config) -> bool:
    """Whether a parsed config.json describes Qwen3-MoE (its ``architectures`` or ``model_type``)."""
    return ARCHITECTURE in (getattr(config, "architectures", None) or []) or \
        getattr(config, "model_type", None) == MODEL_TYPE


def check_moe_config(config: SimpleNamespace) -> None:
    """Raise ValueError for MoE settings no forward pass could run, naming the README section."""
    where = f"see {README}, 'The config fields'"
    checks = [
        (isinstance(config.num_experts, int) and config.num_experts >= 1,
         f"num_experts must be a positive int, got {config.num_experts!r}"),
        (isinstance(config.num_experts_per_tok, int) and config.num_experts_per_tok >= 1,
         f"num_experts_per_tok must be a positive int, got {config.num_experts_per_tok!r}"),
        (config.num_experts_per_tok <= config.num_experts,
         f"num_experts_per_tok ({config.num_experts_per_tok}) cannot exceed num_experts ({config.num_experts}): "
         "a token cannot pick more distinct experts than there are"),
        (isinstance(config.moe_intermediate_size, int) and config.moe_intermediate_size >= 1,
         f"moe_intermediate_size must be a positive int, got {config.moe_intermediate_size!r}"),
        (isinstance(config.decoder_sparse_step, int) and config.decoder_sparse_step >= 1,
         f"decoder_sparse_step must be a positive int, got {config.decoder_sparse_step!r}"),
        (all(isinstance(i, int) and 0 <= i < config.num_hidden_layers for i in config.mlp_only_layers),
         f"mlp_only_layers must list layer indices in [0, {config.num_hidden_layers}), got {config.mlp_only_layers!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"Qwen3-MoE config: {message} ({where})")


def moe_config_fields(raw: dict) -> dict:
    """The MoE fields of a config.json (transformers' defaults when absent), for ``load_model_config``."""
    is_moe = ARCHITECTURE in (raw.get("architectures") or []) or raw.get("model_type") == MODEL_TYPE
    return {
        "architectures": list(raw.get("architectures") or []),
        "model_type": raw.get("model_type"),
        # transformers 5 writes num_local_experts (its attribute_map's name for num_experts).
        "num_experts": raw.get("num_experts", raw.get("num_local_experts", 128 if is_moe else 0)),
        "num_experts_per_tok": raw.get("num_experts_per_tok", 8),
        "moe_intermediate_size": raw.get("moe_intermediate_size", 768),
        "norm_topk_prob": raw.get("norm_topk_prob", False),
        "decoder_sparse_step": raw.get("decoder_sparse_step", 1),
        "mlp_only_layers": list(raw.get("mlp_only_layers") or []),
    }
