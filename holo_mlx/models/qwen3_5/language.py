"""The Qwen3.5 hybrid decoder: Gated DeltaNet layers (`linear_attn`) and, every few layers, gated
full attention (`self_attn`: q/k RMSNorm, partial interleaved M-RoPE, few KV heads), each followed
by a dense SwiGLU MLP or, in the MoE variant, Qwen3-VL's routed experts plus a shared expert.

A Gated DeltaNet layer keeps a fixed-size state per sequence (models/cache.py's
RecurrentLayerCache): the last kernel - 1 inputs of its causal depthwise convolution, and a float32
linear-attention state per value head, updated by the gated delta rule of kernels.py: mlx-lm's
Metal kernel on a GPU, holo_mlx/cpu/gated_delta.py's chunked form on the CPU backend.

Attribute names equal the checkpoint keys under `language_model.` (mlx-vlm's names); the zero-
centred RMSNorm weights of the checkpoints arrive here with their 1 added (weights.py).
"""

import mlx.core as mx
import mlx.nn as nn
from mlx.nn.layers.distributed import shard_inplace, shard_linear
from mlx_lm.models.gated_delta import normalize_qk

from ... import kernels
from ..cache import RecurrentLayerCache
from ..decoder import Attention, AttentionGroup, Decoder, DecoderLayer, LanguageModel, MRoPE
from ..layers import MLP, check_split
from ..qwen3_vl.language import SparseMoeBlock, shard_swiglu_inplace
from .config import LINEAR, TextConfig


class GatedRMSNorm(nn.Module):
    """RMSNorm over each value head, then scaled by silu of the head's gate, in float32 (the reference's)."""

    def __init__(self, dims: int, eps: float):
        super().__init__()
        self.weight = mx.ones((dims,))
        self.eps = eps

    def __call__(self, x: mx.array, gate: mx.array) -> mx.array:
        normed = mx.fast.rms_norm(x, self.weight, self.eps).astype(mx.float32)
        return (normed * nn.silu(gate.astype(mx.float32))).astype(x.dtype)


class GatedDeltaNet(nn.Module):
    """Linear attention with the gated delta rule. Keys and queries have `linear_num_key_heads`
    heads, each shared by consecutive value heads; the state is (value heads, value dim, key dim)."""

    def __init__(self, config: TextConfig):
        super().__init__()
        dim = config.hidden_size
        self.key_heads, self.key_dim = config.linear_num_key_heads, config.linear_key_head_dim
        self.value_heads, self.value_dim = config.linear_num_value_heads, config.linear_value_head_dim
        self.kernel = config.linear_conv_kernel_dim
        keys, values = self.key_heads * self.key_dim, self.value_heads * self.value_dim
        self.splits = [keys, 2 * keys]  # q | k | v along the projection
        channels = 2 * keys + values
        self.in_proj_qkv = nn.Linear(dim, channels, bias=False)
        self.in_proj_z = nn.Linear(dim, values, bias=False)
        self.in_proj_b = nn.Linear(dim, self.value_heads, bias=False)
        self.in_proj_a = nn.Linear(dim, self.value_heads, bias=False)
        # Depthwise and causal: the cache holds the kernel - 1 inputs before a chunk, so no padding.
        self.conv1d = nn.Conv1d(channels, channels, self.kernel, groups=channels, bias=False)
        self.A_log = mx.zeros((self.value_heads,))
        self.dt_bias = mx.ones((self.value_heads,))
        self.norm = GatedRMSNorm(self.value_dim, config.rms_norm_eps)
        self.out_proj = nn.Linear(values, dim, bias=False)

    def shard(self, group: mx.distributed.Group) -> None:
        """Tensor parallelism by heads, as mlx-lm splits it: each rank keeps a contiguous run of key
        heads and the value heads they serve; q, k and v are split each on its own (in the
        projection and the convolution's channels alike), out_proj by input rows with an all-sum."""
        ranks = group.size()
        check_split("linear_num_key_heads", self.key_heads, ranks,
                    f" (Gated DeltaNet layers take at most {self.key_heads} ranks)")
        self.in_proj_qkv = shard_linear(self.in_proj_qkv, "all-to-sharded", segments=self.splits, group=group)
        shard_inplace(self.conv1d, lambda path, weight: (0, self.splits), group=group)
        self.conv1d.groups //= ranks
        for name in ("in_proj_z", "in_proj_b", "in_proj_a"):
            setattr(self, name, shard_linear(getattr(self, name), "all-to-sharded", group=group))
        self.A_log, self.dt_bias = (mx.split(weight, ranks)[group.rank()] for weight in (self.A_log, self.dt_bias))
        self.out_proj = shard_linear(self.out_proj, "sharded-to-all", group=group)
        self.key_heads //= ranks
        self.value_heads //= ranks
        self.splits = [split // ranks for split in self.splits]

    def __call__(self, x: mx.array, groups: list[AttentionGroup], last_rows: mx.array | None = None) -> mx.array:
        """x: (tokens, dim), each group's rows one after the other, as Attention takes them. Every
        row updates the state; with `last_rows` only those rows go on through the output."""
        mixed, decay, beta = self.in_proj_qkv(x), self.in_proj_a(x), self.in_proj_b(x)
        outputs, start = [], 0
        for group in groups:
            batch, length = group.shape
            rows = slice(start, start + batch * length)
            start = rows.stop
            cache = group.cache
            inputs = mixed[rows].reshape(batch, length, -1)
            before = cache[0] if cache is not None and cache[0] is not None else \
                mx.zeros((batch, self.kernel - 1, inputs.shape[-1]), inputs.dtype)
            window = mx.concatenate([before, inputs], axis=1)
            if cache is not None:  # a copy, so the state does not keep the whole chunk alive
                cache[0] = mx.contiguous(window[:, -(self.kernel - 1):])
            q, k, v = mx.split(nn.silu(self.conv1d(window)), self.splits, axis=-1)
            q = q.reshape(batch, length, self.key_heads, self.key_dim)
            k = k.reshape(batch, length, self.key_heads, self.key_dim)
            v = v.reshape(batch, length, self.value_heads, self.value_dim)
            q, k = normalize_qk(q, k, inv_scale=self.key_dim**-0.5, eps=1e-6)
            out, state = kernels.gated_delta(
                q, k, v, decay[rows].reshape(batch, length, -1), beta[rows].reshape(batch, length, -1),
                self.A_log, self.dt_bias, cache[1] if cache is not None else None)
            if cache is not None:
                cache[1] = state
            outputs.append(out.reshape(batch * length, self.value_heads, self.value_dim))
        out, gate = mx.concatenate(outputs), self.in_proj_z(x if last_rows is None else x[last_rows])
        if last_rows is not None:
            out = out[last_rows]
        out = self.norm(out, gate.reshape(out.shape))
        return self.out_proj(out.reshape(out.shape[0], -1))


class SharedExpertMoeBlock(SparseMoeBlock):
    """Qwen3-VL's routed experts plus a shared SwiGLU that every token takes, scaled per token by
    the sigmoid of a one-output gate."""

    def __init__(self, config: TextConfig):
        super().__init__(config)
        self.shared_expert = MLP(config.hidden_size, config.shared_expert_intermediate_size, bias=False)
        self.shared_expert_gate = nn.Linear(config.hidden_size, 1, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        shared = mx.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return self.all_sum(self.routed(x) + shared)

    def shard(self, group: mx.distributed.Group) -> None:
        """The experts as Qwen3-VL's, the shared expert split as an MLP but in place, its gate whole
        (the scale is per token, so it applies to each rank's share): one all-sum for the block."""
        super().shard(group)
        shard_swiglu_inplace(self.shared_expert, "shared_expert_intermediate_size", group)


def feed_forward(config: TextConfig) -> nn.Module:
    return SharedExpertMoeBlock(config) if config.num_experts else \
        MLP(config.hidden_size, config.intermediate_size, bias=False)


class LinearAttentionLayer(DecoderLayer):
    """A decoder layer whose tokens mix through a Gated DeltaNet: a recurrent cache, no mask (its
    rows are never padded, see models/cache.py)."""

    def __init__(self, linear_attn: GatedDeltaNet, mlp: nn.Module, dim: int, eps: float):
        nn.Module.__init__(self)  # not DecoderLayer's, which places its mixer under self_attn
        self.linear_attn = linear_attn
        self.mlp = mlp
        self.input_layernorm = nn.RMSNorm(dim, eps=eps)
        self.post_attention_layernorm = nn.RMSNorm(dim, eps=eps)

    @property
    def mixer(self) -> nn.Module:
        return self.linear_attn

    @staticmethod
    def make_cache() -> RecurrentLayerCache:
        return RecurrentLayerCache(2)  # conv state, linear-attention state

    @staticmethod
    def make_mask(embeds: mx.array, cache) -> None:
        return None


class Qwen3_5Model(Decoder):
    def __init__(self, config: TextConfig):
        super().__init__()
        dim, eps = config.hidden_size, config.rms_norm_eps
        self.embed_tokens = nn.Embedding(config.vocab_size, dim)
        self.layers = [
            LinearAttentionLayer(GatedDeltaNet(config), feed_forward(config), dim, eps)
            if kind == LINEAR else
            DecoderLayer(Attention(dim, config.num_attention_heads, config.num_key_value_heads, config.head_dim,
                                   bias=False, qk_norm_eps=eps, output_gate=True, rotary_dim=config.rotary_dim),
                         feed_forward(config), dim, eps)
            for kind in config.layer_types
        ]
        self.norm = nn.RMSNorm(dim, eps=eps)
        self.rope = MRoPE(config.rotary_dim, config.rope_theta, config.mrope_section, interleaved=True)


def language_model(config: TextConfig) -> LanguageModel:
    return LanguageModel(Qwen3_5Model(config), config.hidden_size, config.vocab_size, config.tie_word_embeddings)
