"""Qwen3 as a plain PyTorch module: no transformers model code, inference only.

All activations use the flat layout [tokens, hidden]: a batch of sequences is
one long run of tokens, and the Context (aios/utils/context.py) says where each
sequence starts. Parameter names match the Hugging Face checkpoint, so loading
is mostly a matter of copying tensors across (aios/utils/loader.py).

Switches that later lessons add, each off by default so earlier lessons keep working:
- ``fuse_residual_norm`` (lesson 5): carry the residual stream beside the hidden
  states and fuse "add residual" into the next RMSNorm.
- ``fused_layers`` (lesson 10): one ``qkv_proj`` instead of q/k/v projections and one
  ``gate_up_proj`` instead of gate/up, built from the tensor-parallel layers of
  aios/layers/linear.py and aios/layers/embed_head.py. Their parameter names differ
  from the checkpoint's; ``Qwen3ForCausalLM.packed_modules_mapping`` says how they
  relate. Tensor parallelism (lesson 14) needs this layout: each rank then holds
  its own slice of every weight and its own share of the attention heads.
"""

from types import SimpleNamespace

import torch
from torch import nn

from aios.engine.distributed import get_tp_size
from aios.layers.activation import SiluAndMul, silu_and_mul
from aios.layers.attention import Attention
from aios.layers.embed_head import ParallelLMHead, VocabParallelEmbedding
from aios.layers.layernorm import RMSNorm
from aios.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear, divide
from aios.layers.rotary_embedding import RotaryEmbedding


def make_rotary_embedding(config: SimpleNamespace) -> RotaryEmbedding:
    """The RoPE cos/sin tables for every position the model supports."""
    return RotaryEmbedding(config.head_dim, config.max_position_embeddings, config.rope_theta)


class Qwen3Attention(nn.Module):
    """Self-attention of one layer: projections, per-head q/k RMSNorm, RoPE, attention, output projection."""

    def __init__(self, config: SimpleNamespace, layer_idx: int, fused_layers: bool = False,
                 rotary_emb: RotaryEmbedding | None = None):
        super().__init__()
        self.fused_layers = fused_layers
        tp_size = get_tp_size() if fused_layers else 1
        # With tensor parallelism (fused layout only) this rank owns a share of the heads.
        self.num_heads = divide(config.num_attention_heads, tp_size)
        self.num_kv_heads = divide(config.num_key_value_heads, tp_size)
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        if fused_layers:
            self.qkv_proj = QKVParallelLinear(hidden, self.head_dim, config.num_attention_heads,
                                              config.num_key_value_heads, bias=config.attention_bias)
            self.o_proj = RowParallelLinear(config.num_attention_heads * self.head_dim, hidden, bias=False)
        else:
            self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=config.attention_bias)
            self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=config.attention_bias)
            self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=config.attention_bias)
            self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
        self.q_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        # One cos/sin table serves every layer: the model passes its shared one in.
        self.rotary_emb = rotary_emb or make_rotary_embedding(config)
        self.attn = Attention(layer_idx, self.num_heads, self.num_kv_heads, self.head_dim)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        """positions: [tokens]; hidden_states: [tokens, hidden] -> [tokens, hidden]."""
        if self.fused_layers:
            return self.forward_fused(positions, hidden_states)
        # BEGIN SOLUTION lesson3
        # Hint: view the projections as [tokens, heads, head_dim]; q_norm/k_norm act per head, before RoPE.
        tokens = hidden_states.shape[0]
        q = self.q_proj(hidden_states).view(tokens, self.num_heads, self.head_dim)
        k = self.k_proj(hidden_states).view(tokens, self.num_kv_heads, self.head_dim)
        v = self.v_proj(hidden_states).view(tokens, self.num_kv_heads, self.head_dim)
        q, k = self.rotary_emb(positions, self.q_norm(q), self.k_norm(k))
        out = self.attn(q, k, v)
        return self.o_proj(out.reshape(tokens, self.num_heads * self.head_dim))
        # END SOLUTION

    def forward_fused(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        """Lesson 10: one ``qkv_proj`` matmul, then split its output into q, k and v.

        hidden_states: [tokens, hidden] -> [tokens, hidden]. ``qkv_proj`` gives
        [tokens, q_size + 2 * kv_size] with q_size = num_heads * head_dim and
        kv_size = num_kv_heads * head_dim (this rank's heads).
        """
        # BEGIN SOLUTION lesson10
        # Hint: torch.split(x, [q_size, kv_size, kv_size], dim=-1); the rest is the unfused forward.
        tokens = hidden_states.shape[0]
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = self.qkv_proj(hidden_states).split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(tokens, self.num_heads, self.head_dim)
        k = k.view(tokens, self.num_kv_heads, self.head_dim)
        v = v.view(tokens, self.num_kv_heads, self.head_dim)
        q, k = self.rotary_emb(positions, self.q_norm(q), self.k_norm(k))
        out = self.attn(q, k, v)
        return self.o_proj(out.reshape(tokens, q_size))
        # END SOLUTION


class Qwen3MLP(nn.Module):
    """The gated feed-forward block: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: SimpleNamespace, fused_layers: bool = False):
        super().__init__()
        self.fused_layers = fused_layers
        hidden, intermediate = config.hidden_size, config.intermediate_size
        if fused_layers:
            self.gate_up_proj = MergedColumnParallelLinear(hidden, [intermediate, intermediate], bias=False)
            self.down_proj = RowParallelLinear(intermediate, hidden, bias=False)
            self.act_fn = SiluAndMul()
        else:
            self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
            self.up_proj = nn.Linear(hidden, intermediate, bias=False)
            self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [tokens, hidden] -> [tokens, hidden]."""
        if self.fused_layers:
            return self.forward_fused(x)
        # BEGIN SOLUTION lesson3
        return self.down_proj(silu_and_mul(self.gate_proj(x), self.up_proj(x)))
        # END SOLUTION

    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """Lesson 10: ``gate_up_proj`` gives [tokens, 2 * intermediate] = [gate | up]; ``act_fn`` splits it."""
        # BEGIN SOLUTION lesson10
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))
        # END SOLUTION


class Qwen3DecoderLayer(nn.Module):
    """One transformer block: pre-norm attention and pre-norm MLP, each with a residual connection."""

    def __init__(
        self, config: SimpleNamespace, layer_idx: int, fuse_residual_norm: bool = False, fused_layers: bool = False,
        rotary_emb: RotaryEmbedding | None = None, cache_idx: int | None = None,
    ):
        """``layer_idx`` is the layer's index in the whole model (what the config's per-layer fields
        refer to); ``cache_idx`` the index of its slot in the KV cache, ``layer_idx`` unless a pipeline
        stage (lesson 21) caches only its own layers."""
        super().__init__()
        self.fuse_residual_norm = fuse_residual_norm
        self.self_attn = Qwen3Attention(config, layer_idx if cache_idx is None else cache_idx, fused_layers, rotary_emb)
        self.mlp = self.make_mlp(config, layer_idx, fused_layers)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def make_mlp(self, config: SimpleNamespace, layer_idx: int, fused_layers: bool) -> nn.Module:
        """The layer's feed-forward block (a model family with another one, like Qwen3-MoE, overrides this)."""
        return Qwen3MLP(config, fused_layers)

    def forward(
        self, positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (hidden_states, residual).

        Unfused (lesson 3): residual is always None and hidden_states is the full stream.
        Fused (lesson 5): hidden_states is this layer's output *before* the residual add,
        and residual carries the stream; the next norm adds them (None before the first layer).
        """
        # BEGIN SOLUTION lesson3
        if not self.fuse_residual_norm:
            h = hidden_states + self.self_attn(positions, self.input_layernorm(hidden_states))
            h = h + self.mlp(self.post_attention_layernorm(h))
            return h, None
        # END SOLUTION
        # BEGIN SOLUTION lesson5
        # Hint: the first layer has no residual yet: the embeddings are the residual stream.
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(positions, hidden_states)
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        return self.mlp(hidden_states), residual
        # END SOLUTION


class Qwen3Model(nn.Module):
    """Embedding, the decoder layers and the final norm."""

    #: The class of each decoder layer (a model family overrides it).
    decoder_layer_class = Qwen3DecoderLayer

    def __init__(self, config: SimpleNamespace, fuse_residual_norm: bool = False, fused_layers: bool = False):
        super().__init__()
        if fused_layers:
            self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        else:
            self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        rotary_emb = make_rotary_embedding(config)
        self.layers = nn.ModuleList(
            self.decoder_layer_class(config, i, fuse_residual_norm, fused_layers, rotary_emb)
            for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """input_ids, positions: [tokens] -> final hidden states [tokens, hidden]."""
        # BEGIN SOLUTION lesson3
        hidden_states = self.embed_tokens(input_ids)
        residual = None
        for layer in self.layers:
            hidden_states, residual = layer(positions, hidden_states, residual)
        if residual is None:
            return self.norm(hidden_states)
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states
        # END SOLUTION


class Qwen3ForCausalLM(nn.Module):
    """Qwen3 with its language-model head. ``forward`` gives hidden states; ``compute_logits`` the scores.

    ``packed_modules_mapping`` (lesson 10): checkpoint module name -> (our fused module,
    which piece of it). It is used only when ``fused_layers`` is on.
    """

    packed_modules_mapping = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }
    #: The model below the head (a model family overrides it).
    model_class = Qwen3Model

    def __init__(self, config: SimpleNamespace, fuse_residual_norm: bool = False, fused_layers: bool = False):
        super().__init__()
        if get_tp_size() > 1 and not fused_layers:
            raise ValueError("tensor parallelism needs the fused, tensor-parallel layers: pass fused_layers=True")
        self.config = config
        self.fused_layers = fused_layers
        self.model = self.model_class(config, fuse_residual_norm, fused_layers)
        if fused_layers:
            self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size)
        else:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, positions)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states: [n, hidden] -> logits [n, vocab] in float32.

        With tensor parallelism only the driver (rank 0) gets logits; the other ranks get None.
        """
        logits = self.lm_head(hidden_states)
        return None if logits is None else logits.float()
