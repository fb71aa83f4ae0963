"""Qwen3 decoder (per-head q/k RMSNorm, no biases) with interleaved M-RoPE; MoE layers for the
30B-A3B use mlx-lm's SwitchGLU under the reference's top-k router.

Attribute names equal the checkpoint keys under `language_model.` (experts as mlx-vlm stacks them).
"""

import mlx.core as mx
import mlx.nn as nn
from mlx.nn.layers.distributed import shard_inplace
from mlx_lm.models.switch_layers import SwitchGLU

from ..decoder import Attention, Decoder, DecoderLayer, LanguageModel, MRoPE
from ..layers import MLP, check_split
from .config import TextConfig


class SparseMoeBlock(nn.Module):
    """Softmax over the experts, the top k renormalized to sum to one, their SwiGLUs weighted."""

    def __init__(self, config: TextConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.switch_mlp = SwitchGLU(config.hidden_size, config.moe_intermediate_size, config.num_experts)
        self.sharding_group = None  # set by shard(): each rank holds a slice of every expert

    def routed(self, x: mx.array) -> mx.array:
        """The experts' weighted sum, this rank's share of it under tensor parallelism."""
        probabilities = mx.softmax(self.gate(x).astype(mx.float32), axis=-1)
        experts = mx.argpartition(-probabilities, kth=self.top_k - 1, axis=-1)[..., :self.top_k]
        scores = mx.take_along_axis(probabilities, experts, axis=-1)
        scores = (scores / scores.sum(axis=-1, keepdims=True)).astype(x.dtype)
        return (self.switch_mlp(x, experts) * scores[..., None]).sum(axis=-2)

    def __call__(self, x: mx.array) -> mx.array:
        return self.all_sum(self.routed(x))

    def all_sum(self, out: mx.array) -> mx.array:
        return out if self.sharding_group is None else mx.distributed.all_sum(out, group=self.sharding_group)

    def shard(self, group: mx.distributed.Group) -> None:
        """Tensor parallelism: every expert split as a dense MLP is, in place (the SwitchGLU routes
        on), the router whole; the block all-sums its output."""
        shard_swiglu_inplace(self.switch_mlp, "moe_intermediate_size", group)
        self.sharding_group = group


def shard_swiglu_inplace(mlp: nn.Module, name: str, group: mx.distributed.Group) -> None:
    """A SwiGLU's (an MLP's or a SwitchGLU's) projections sliced as MLP.shard splits them, without
    its all-sum: the block that holds it sums once for all it adds up."""
    check_split(name, mlp.gate_proj.weight.shape[-2], group.size())
    if "scales" in mlp.down_proj:  # quantized: each rank's rows of down_proj must be whole groups
        check_split(f"{name}'s quantization groups", mlp.down_proj.scales.shape[-1], group.size(),
                    " (convert with a smaller group size)")
    shard_inplace(mlp.gate_proj, "all-to-sharded", group=group)
    shard_inplace(mlp.up_proj, "all-to-sharded", group=group)
    shard_inplace(mlp.down_proj, "sharded-to-all", group=group)


class Qwen3Model(Decoder):
    def __init__(self, config: TextConfig):
        super().__init__()
        dim, eps = config.hidden_size, config.rms_norm_eps
        self.embed_tokens = nn.Embedding(config.vocab_size, dim)
        self.layers = [
            DecoderLayer(Attention(dim, config.num_attention_heads, config.num_key_value_heads, config.head_dim,
                                   bias=False, qk_norm_eps=eps),
                         SparseMoeBlock(config) if config.is_sparse(layer)
                         else MLP(dim, config.intermediate_size, bias=False), dim, eps)
            for layer in range(config.num_hidden_layers)
        ]
        self.norm = nn.RMSNorm(dim, eps=eps)
        self.rope = MRoPE(config.head_dim, config.rope_theta, config.mrope_section, interleaved=True)


def language_model(config: TextConfig) -> LanguageModel:
    return LanguageModel(Qwen3Model(config), config.hidden_size, config.vocab_size, config.tie_word_embeddings)
