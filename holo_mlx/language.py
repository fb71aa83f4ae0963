"""Qwen2 decoder with multimodal rotary embeddings (M-RoPE) and an untied lm_head.

Attribute names equal the checkpoint keys under `language_model.`. Positions come in as an
explicit (3, batch, length) array, so per-request rope state never lives on the module.
"""

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.base import create_attention_mask

from .config import TextConfig
from .kernels import attention
from .layers import MLP, apply_rotary


@dataclass
class Span:
    """Rows that attend together in a decoder pass: a prefill chunk, or the decode batch."""

    embeds: mx.array  # (batch, length, dim)
    positions: mx.array  # (3, batch, length) M-RoPE positions
    cache: list | None = None  # one KV cache per layer
    mask: mx.array | str | None = None  # None: causal over the cache


@dataclass
class AttentionGroup:
    """One span as a single layer's attention sees it."""

    shape: tuple[int, int]  # (batch, length)
    cos: mx.array
    sin: mx.array
    mask: mx.array | str | None
    cache: object | None


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

    def __call__(self, x: mx.array, groups: list["AttentionGroup"]) -> mx.array:
        """x: (tokens, dim), the rows of each group one after the other."""
        queries, keys, values = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        outputs, start = [], 0
        for group in groups:
            batch, length = group.shape
            rows = slice(start, start + batch * length)
            start = rows.stop
            q = queries[rows].reshape(batch, length, self.n_heads, -1).transpose(0, 2, 1, 3)
            k = keys[rows].reshape(batch, length, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
            v = values[rows].reshape(batch, length, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
            q, k = apply_rotary(q, group.cos, group.sin), apply_rotary(k, group.cos, group.sin)
            if group.cache is not None:
                k, v = group.cache.update_and_fetch(k, v)
            out = attention(q, k, v, scale=self.scale, mask=group.mask)
            outputs.append(out.transpose(0, 2, 1, 3).reshape(batch * length, -1))
        return self.o_proj(mx.concatenate(outputs))


class DecoderLayer(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config.hidden_size, config.intermediate_size, bias=False)
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def __call__(self, x: mx.array, groups: list["AttentionGroup"]) -> mx.array:
        x = x + self.self_attn(self.input_layernorm(x), groups)
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
        return self.forward([Span(inputs_embeds, positions, cache, mask)])[0]

    def forward(self, spans: list[Span]) -> list[mx.array]:
        """Final hidden states of independent spans run in one pass.

        The projections and MLPs see every span's tokens at once, so a prefill chunk and a decode
        batch cost one read of the weights; attention stays per span, with its own cache and mask.
        """
        groups = []
        for span in spans:
            cache = span.cache or [None] * len(self.layers)
            mask = span.mask if span.mask is not None else create_attention_mask(span.embeds, cache[0])
            cos, sin = self.rope(span.positions, span.embeds.dtype)
            groups.append((span.embeds.shape[:2], cos, sin, mask, cache))
        dim = spans[0].embeds.shape[-1]
        x = mx.concatenate([span.embeds.reshape(-1, dim) for span in spans])
        for index, layer in enumerate(self.layers):
            x = layer(x, [AttentionGroup(shape, cos, sin, mask, cache[index])
                          for shape, cos, sin, mask, cache in groups])
        x = self.norm(x)
        sizes = np.cumsum([span.embeds.shape[0] * span.embeds.shape[1] for span in spans])[:-1].tolist()
        return [part.reshape(*span.embeds.shape[:2], dim) for part, span in zip(mx.split(x, sizes), spans)]


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
