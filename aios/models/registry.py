"""Which model class a checkpoint needs, from its config.json (``architectures`` / ``model_type``)."""

from aios.models.qwen3 import Qwen3ForCausalLM
from aios.models.qwen3_moe import Qwen3MoeForCausalLM
from aios.utils.moe_config import is_moe_config


def model_class(config) -> type:
    """``Qwen3MoeForCausalLM`` for a Qwen3-MoE config (lesson 20), else ``Qwen3ForCausalLM``."""
    return Qwen3MoeForCausalLM if is_moe_config(config) else Qwen3ForCausalLM
