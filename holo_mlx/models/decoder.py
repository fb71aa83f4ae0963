"""The decoder every family shares: attention over independent spans, M-RoPE tables, DeepStack.

A family builds its layers from these pieces (bias or per-head q/k norms, dense or MoE MLPs) and
names them as its checkpoint does. Positions come in as an explicit (3, batch, length) array, so
per-request rope state never lives on a module.
"""

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.nn.layers.distributed import shard_linear
from mlx_lm.models.base import create_attention_mask

from .. import kernels
from .base import Span
from .cache import KVLayerCache
from .layers import check_split
from .pipeline import PipelineStage


@dataclass
class AttentionGroup:
    """One span as a single layer's attention sees it."""

    shape: tuple[int, int]  # (batch, length)
    cos: mx.array
    sin: mx.array
    mask: mx.array | str | None
    cache: object | None

    def last_query_mask(self) -> mx.array | None:
        """The mask of each row's last query alone ("causal" lets the last query see every key)."""
        return self.mask[..., -1:, :] if isinstance(self.mask, mx.array) else None


class MRoPE:
    """cos/sin tables where each rotary frequency turns with the temporal, height or width position.

    Qwen2.5-VL gives the axes consecutive blocks of frequencies (`mrope_section` long each);
    Qwen3-VL interleaves them (t, h, w, t, h, w, ...) while h and w last, then t alone.
    """

    def __init__(self, head_dim: int, theta: float, section: list[int], interleaved: bool):
        self.inv_freq = mx.array(1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)))
        if interleaved:
            index = np.arange(head_dim // 2)
            axis = np.zeros(head_dim // 2, dtype=np.int32)
            for number in (1, 2):
                axis[(index % 3 == number) & (index < 3 * section[number])] = number
        else:
            axis = np.repeat(np.arange(3), section).astype(np.int32)
        self.axis = mx.array(axis)

    def __call__(self, positions: mx.array, dtype: mx.Dtype) -> tuple[mx.array, mx.array]:
        freqs = positions[..., None].astype(mx.float32) * self.inv_freq  # (3, batch, length, dims/2)
        freqs = mx.take_along_axis(freqs, self.axis[None, None, None, :], axis=0)[0]
        angles = mx.concatenate([freqs, freqs], axis=-1)[:, None]  # (batch, 1, length, dims)
        return mx.cos(angles).astype(dtype), mx.sin(angles).astype(dtype)


class Attention(nn.Module):
    """Grouped-query attention; Qwen2 has q/k/v biases, Qwen3 an RMSNorm on each query and key head.

    Qwen3.5 adds an output gate (q_proj gives each head its query, then as many gate values, and
    the attention output is scaled by their sigmoid before o_proj) and partial rotary: only the
    first `rotary_dim` dimensions of each head turn, the rest pass through.
    """

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, head_dim: int, *, bias: bool,
                 qk_norm_eps: float | None = None, output_gate: bool = False, rotary_dim: int | None = None):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.scale = head_dim**-0.5
        self.output_gate = output_gate
        self.rotary_dim = rotary_dim or head_dim
        self.q_proj = nn.Linear(dim, n_heads * head_dim * (2 if output_gate else 1), bias=bias)
        self.k_proj = nn.Linear(dim, n_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(dim, n_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * head_dim, dim, bias=False)
        if qk_norm_eps is not None:
            self.q_norm = nn.RMSNorm(head_dim, eps=qk_norm_eps)
            self.k_norm = nn.RMSNorm(head_dim, eps=qk_norm_eps)

    def _heads(self, x: mx.array, batch: int, length: int, heads: int, norm: str) -> mx.array:
        x = x.reshape(batch, length, heads, self.head_dim)
        if norm in self:
            x = self[norm](x)
        return x.transpose(0, 2, 1, 3)

    def _rotate(self, x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
        if self.rotary_dim == self.head_dim:
            return kernels.apply_rotary(x, cos, sin)
        turned = kernels.apply_rotary(x[..., :self.rotary_dim], cos, sin)
        return mx.concatenate([turned, x[..., self.rotary_dim:]], axis=-1)

    def __call__(self, x: mx.array, groups: list[AttentionGroup], last_rows: mx.array | None = None) -> mx.array:
        """x: (tokens, dim), the rows of each group one after the other. With `last_rows` (the index
        of each sequence's last row) every row still enters the KV cache, but only those rows query."""
        keys, values = self.k_proj(x), self.v_proj(x)
        queries = self.q_proj(x if last_rows is None else x[last_rows])
        if self.output_gate:  # per head: head_dim query values, then head_dim gate values
            paired = queries.reshape(queries.shape[0], -1, 2, self.head_dim)
            queries, gate = (paired[:, :, part].reshape(queries.shape[0], -1) for part in (0, 1))
        outputs, start, query_start = [], 0, 0
        for group in groups:
            batch, length = group.shape
            queried = length if last_rows is None else 1
            rows = slice(start, start + batch * length)
            query_rows = slice(query_start, query_start + batch * queried)
            start, query_start = rows.stop, query_rows.stop
            q = self._heads(queries[query_rows], batch, queried, self.n_heads, "q_norm")
            k = self._heads(keys[rows], batch, length, self.n_kv_heads, "k_norm")
            v = values[rows].reshape(batch, length, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
            cos, sin = group.cos, group.sin
            q = self._rotate(q, cos[..., -queried:, :], sin[..., -queried:, :])
            k = self._rotate(k, cos, sin)
            if group.cache is not None:
                k, v = group.cache.update_and_fetch(k, v)
            mask = group.mask if last_rows is None else group.last_query_mask()
            out = kernels.attention(q, k, v, scale=self.scale, mask=mask)
            outputs.append(out.transpose(0, 2, 1, 3).reshape(batch * queried, -1))
        out = mx.concatenate(outputs)
        return self.o_proj(out * mx.sigmoid(gate) if self.output_gate else out)

    def shard(self, group: mx.distributed.Group) -> None:
        """Tensor parallelism: q/k/v split by output columns, o_proj by input rows with an all-sum
        after it, so each rank runs its share of the heads."""
        ranks = group.size()
        hint = f" (this model takes at most {self.n_kv_heads} ranks, a divisor of its KV heads)"
        check_split("num_key_value_heads", self.n_kv_heads, ranks, hint)
        check_split("num_attention_heads", self.n_heads, ranks, hint)
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(self, name, shard_linear(getattr(self, name), "all-to-sharded", group=group))
        self.o_proj = shard_linear(self.o_proj, "sharded-to-all", group=group)
        self.n_heads //= ranks
        self.n_kv_heads //= ranks


class DecoderLayer(nn.Module):
    def __init__(self, self_attn: Attention, mlp: nn.Module, dim: int, eps: float):
        super().__init__()
        self.self_attn = self_attn
        self.mlp = mlp
        self.input_layernorm = nn.RMSNorm(dim, eps=eps)
        self.post_attention_layernorm = nn.RMSNorm(dim, eps=eps)

    @property
    def mixer(self) -> nn.Module:
        """What mixes the tokens: attention here, a recurrent layer in a hybrid's other layer kind."""
        return self.self_attn

    @staticmethod
    def make_cache() -> KVLayerCache:
        return KVLayerCache()

    @staticmethod
    def make_mask(embeds: mx.array, cache) -> mx.array | str | None:
        """Causal over the cache, its left padding included (mlx-lm's rule)."""
        return create_attention_mask(embeds, cache)

    def __call__(self, x: mx.array, groups: list[AttentionGroup], last_rows: mx.array | None = None) -> mx.array:
        attended = self.mixer(self.input_layernorm(x), groups, last_rows)
        x = (x if last_rows is None else x[last_rows]) + attended
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """embed_tokens, layers, norm: a family's subclass builds them; `rope` is its MRoPE. Under
    pipeline parallelism (`pipeline`) `stage` is this rank's run of layers, the others None."""

    rope: MRoPE
    stage: PipelineStage | None = None

    def shard(self, group: mx.distributed.Group) -> None:
        """Tensor parallelism as mlx-lm's shard(): every layer's token mixer (attention, or a hybrid's
        recurrent layer) and MLP split across the ranks, two all-sums of the hidden states per
        layer; embed_tokens and norm stay whole."""
        for layer in self.layers:
            layer.mixer.shard(group)
            layer.mlp.shard(group)

    def pipeline(self, group: mx.distributed.Group) -> None:
        """Pipeline parallelism as mlx-lm's pipeline(): keep this rank's run of layers; the others
        become None, so their weights are never read."""
        self.stage = PipelineStage.of(group, len(self.layers))
        self.layers = [layer if self.stage.start <= index < self.stage.end else None
                       for index, layer in enumerate(self.layers)]

    def own_layers(self) -> list[tuple[int, nn.Module]]:
        """(index, layer) of the layers this process runs, each with one cache of a make_cache() list."""
        return [(index, layer) for index, layer in enumerate(self.layers) if layer is not None]

    def __call__(self, inputs_embeds: mx.array, positions: mx.array, cache=None, mask=None,
                 last_only: bool = False, deepstack: mx.array | None = None) -> mx.array:
        """Final hidden states (after the last RMSNorm) for embeddings of shape (batch, length, dim)."""
        return self.forward([Span(inputs_embeds, positions, cache, mask, deepstack)], last_only)[0]

    def forward(self, spans: list[Span], last_only: bool = False) -> list[mx.array]:
        """Final hidden states of independent spans run in one pass: (batch, length, dim) per span,
        or (batch, 1, dim) with `last_only`, which generation needs.

        The projections and MLPs see every span's tokens at once, so a prefill chunk and a decode
        batch cost one read of the weights; attention stays per span, with its own cache and mask.
        With `last_only` the final layer runs attention's queries, o_proj and the MLP for each
        sequence's last row alone (llama.cpp does the same): 4 % of a prompt's arithmetic on 0.5b.
        """
        groups, layers = [], self.own_layers()
        for span in spans:
            cache = span.cache or [None] * len(layers)
            # Each layer kind makes its mask from a cache of its own kind (a hybrid's first layer
            # may keep no KV at all).
            masks = {}
            for (_, layer), layer_cache in zip(layers, cache):
                if type(layer) not in masks:
                    masks[type(layer)] = span.mask if span.mask is not None else layer.make_mask(span.embeds, layer_cache)
            cos, sin = self.rope(span.positions, span.embeds.dtype)
            groups.append((span.embeds.shape[:2], cos, sin, masks, cache))
        dim = spans[0].embeds.shape[-1]
        x = mx.concatenate([span.embeds.reshape(-1, dim) for span in spans])
        deepstack = self._deepstack(spans)
        last_rows = mx.array(self._last_rows([span.embeds.shape[:2] for span in spans])) if last_only else None
        final = len(self.layers) - 1
        if self.stage is not None:
            x = self.stage.receive(x)
        for position, (index, layer) in enumerate(layers):
            x = layer(x, [AttentionGroup(shape, cos, sin, masks[type(layer)], cache[position])
                          for shape, cos, sin, masks, cache in groups], last_rows if index == final else None)
            if deepstack is not None and index < len(deepstack):
                x = x + (deepstack[index] if last_rows is None or index < final else deepstack[index][last_rows])
        if self.stage is not None:
            x = self.stage.hand_on(x, last_rows)
        x = self.norm(x)
        shapes = [(span.embeds.shape[0], 1 if last_only else span.embeds.shape[1]) for span in spans]
        sizes = np.cumsum([batch * length for batch, length in shapes])[:-1].tolist()
        return [part.reshape(*shape, dim) for part, shape in zip(mx.split(x, sizes), shapes)]

    @staticmethod
    def _deepstack(spans: list[Span]) -> mx.array | None:
        """(levels, tokens, dim) added to the rows after each of the first layers: every span's
        DeepStack features (zero outside image tokens), zeros for spans without; None when no span has any."""
        present = [span.deepstack for span in spans if span.deepstack is not None]
        if not present:
            return None
        levels, dim = present[0].shape[0], present[0].shape[-1]
        parts = [span.deepstack.reshape(levels, -1, dim) if span.deepstack is not None
                 else mx.zeros((levels, span.embeds.shape[0] * span.embeds.shape[1], dim), span.embeds.dtype)
                 for span in spans]
        return mx.concatenate(parts, axis=1)

    @staticmethod
    def _last_rows(shapes: list[tuple[int, int]]) -> np.ndarray:
        """Index of each sequence's last row in the concatenated (tokens, dim) rows of these spans:
        the sequences lie back to back, so it is the running sum of their lengths, minus one."""
        lengths = [length for batch, length in shapes for _ in range(batch)]
        return (np.cumsum(lengths) - 1).astype(np.int32)


class LanguageModel(nn.Module):
    """A decoder and its lm_head (or the embedding matrix, when tied)."""

    def __init__(self, model: Decoder, dim: int, vocab_size: int, tie_word_embeddings: bool):
        super().__init__()
        self.model = model
        self.tie_word_embeddings = tie_word_embeddings
        if not tie_word_embeddings:
            self.lm_head = nn.Linear(dim, vocab_size, bias=False)

    def logits(self, hidden: mx.array) -> mx.array:
        if self.tie_word_embeddings:
            return self.model.embed_tokens.as_linear(hidden)
        return self.lm_head(hidden)
