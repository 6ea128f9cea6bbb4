"""Qwen3 as a plain PyTorch module: no transformers model code, inference only.

All activations use the flat layout [tokens, hidden]: a batch of sequences is
one long run of tokens, and the Context (aios/utils/context.py) says where each
sequence starts. Parameter names match the Hugging Face checkpoint, so loading
is mostly a matter of copying tensors across (aios/utils/loader.py).

Switches that later lessons add, each off by default so earlier lessons keep working:
- ``fuse_residual_norm`` (lesson 5): carry the residual stream beside the hidden
  states and fuse "add residual" into the next RMSNorm.
"""

from types import SimpleNamespace

import torch
from torch import nn

from aios.layers.activation import silu_and_mul
from aios.layers.attention import Attention
from aios.layers.layernorm import RMSNorm
from aios.layers.rotary_embedding import RotaryEmbedding


class Qwen3Attention(nn.Module):
    """Self-attention of one layer: projections, per-head q/k RMSNorm, RoPE, attention, output projection."""

    def __init__(self, config: SimpleNamespace, layer_idx: int):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=config.attention_bias)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=config.attention_bias)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=config.attention_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
        self.q_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(self.head_dim, config.max_position_embeddings, config.rope_theta)
        self.attn = Attention(layer_idx, self.num_heads, self.num_kv_heads, self.head_dim)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        """positions: [tokens]; hidden_states: [tokens, hidden] -> [tokens, hidden]."""
        # Hint: view the projections as [tokens, heads, head_dim]; q_norm/k_norm act per head, before RoPE.
        raise NotImplementedError("Lesson 3: implement Qwen3Attention.forward in aios/models/qwen3.py — see exercises/lesson03/README.md, 'What to implement'")


class Qwen3MLP(nn.Module):
    """The gated feed-forward block: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: SimpleNamespace):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [tokens, hidden] -> [tokens, hidden]."""
        raise NotImplementedError("Lesson 3: implement Qwen3MLP.forward in aios/models/qwen3.py — see exercises/lesson03/README.md, 'What to implement'")


class Qwen3DecoderLayer(nn.Module):
    """One transformer block: pre-norm attention and pre-norm MLP, each with a residual connection."""

    def __init__(self, config: SimpleNamespace, layer_idx: int, fuse_residual_norm: bool = False):
        super().__init__()
        self.fuse_residual_norm = fuse_residual_norm
        self.self_attn = Qwen3Attention(config, layer_idx)
        self.mlp = Qwen3MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self, positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (hidden_states, residual).

        Unfused (lesson 3): residual is always None and hidden_states is the full stream.
        Fused (lesson 5): hidden_states is this layer's output *before* the residual add,
        and residual carries the stream; the next norm adds them (None before the first layer).
        """
        raise NotImplementedError("Lesson 3: implement Qwen3DecoderLayer.forward in aios/models/qwen3.py — see exercises/lesson03/README.md, 'What to implement'")
        # Hint: the first layer has no residual yet: the embeddings are the residual stream.
        raise NotImplementedError("Lesson 5: implement Qwen3DecoderLayer.forward in aios/models/qwen3.py — see exercises/lesson05/README.md, 'What to implement'")


class Qwen3Model(nn.Module):
    """Embedding, the decoder layers and the final norm."""

    def __init__(self, config: SimpleNamespace, fuse_residual_norm: bool = False):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            Qwen3DecoderLayer(config, i, fuse_residual_norm) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """input_ids, positions: [tokens] -> final hidden states [tokens, hidden]."""
        raise NotImplementedError("Lesson 3: implement Qwen3Model.forward in aios/models/qwen3.py — see exercises/lesson03/README.md, 'What to implement'")


class Qwen3ForCausalLM(nn.Module):
    """Qwen3 with its language-model head. ``forward`` gives hidden states; ``compute_logits`` the scores."""

    def __init__(self, config: SimpleNamespace, fuse_residual_norm: bool = False):
        super().__init__()
        self.config = config
        self.model = Qwen3Model(config, fuse_residual_norm)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, positions)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states: [n, hidden] -> logits [n, vocab] in float32."""
        return self.lm_head(hidden_states).float()
