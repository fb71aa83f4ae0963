"""Qwen2 decoder with multimodal rotary embeddings (M-RoPE) and an untied lm_head.

Attribute names equal the checkpoint keys under `language_model.`. Positions come in as an
explicit (3, batch, length) array, so per-request rope state never lives on the module.
"""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.base import create_attention_mask

from .config import TextConfig
from .layers import MLP, apply_rotary


class MRoPE:
    """cos/sin tables: frequency i rotates with the temporal, height or width position by mrope_section."""

    def __init__(self, config: TextConfig):
        dims = config.head_dim
        self.inv_freq = mx.array(1.0 / (config.rope_theta ** (np.arange(0, dims, 2, dtype=np.float32) / dims)))
        self.axis = mx.array(np.repeat(np.arange(3), config.mrope_section).astype(np.int32))

    def __call__(self, positions: mx.array, dtype: mx.Dtype) -> tuple[mx.array, mx.array]:
        freqs = positions[..., None].astype(mx.float32) * self.inv_freq  # (3, batch, length, dims/2)
        freqs = mx.take_along_axis(freqs, self.axis[None, None, None, :], axis=0)[0]
        angles = mx.concatenate([freqs, freqs], axis=-1)[:, None]  # (batch, 1, length, dims)
        return mx.cos(angles).astype(dtype), mx.sin(angles).astype(dtype)


class Attention(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        dim, self.head_dim = config.hidden_size, config.head_dim
        self.n_heads, self.n_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.scale = self.head_dim**-0.5
        self.q_proj = nn.Linear(dim, self.n_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, dim, bias=False)

    def __call__(self, x, cos, sin, mask, cache=None) -> mx.array:
        batch, length, _ = x.shape
        q = self.q_proj(x).reshape(batch, length, self.n_heads, -1).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(batch, length, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(batch, length, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(batch, length, -1))


class DecoderLayer(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config.hidden_size, config.intermediate_size, bias=False)
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def __call__(self, x, cos, sin, mask, cache=None) -> mx.array:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2Model(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = [DecoderLayer(config) for _ in range(config.num_hidden_layers)]
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rope = MRoPE(config)

    def __call__(self, inputs_embeds: mx.array, positions: mx.array, cache=None, mask=None) -> mx.array:
        """Final hidden states (after the last RMSNorm) for embeddings of shape (batch, length, dim)."""
        cache = cache or [None] * len(self.layers)
        if mask is None:
            mask = create_attention_mask(inputs_embeds, cache[0])
        cos, sin = self.rope(positions, inputs_embeds.dtype)
        x = inputs_embeds
        for layer, layer_cache in zip(self.layers, cache):
            x = layer(x, cos, sin, mask, layer_cache)
        return self.norm(x)


class LanguageModel(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.config = config
        self.model = Qwen2Model(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def logits(self, hidden: mx.array) -> mx.array:
        if self.config.tie_word_embeddings:
            return self.model.embed_tokens.as_linear(hidden)
        return self.lm_head(hidden)
