"""toy_hybrid: a tiny hybrid family (recurrent-state layers and attention layers), to prove that a
hybrid needs nothing outside its own code and holo_mlx/models/.

The toy_vl family (toy_family.py) with its decoder made as Qwen3.5's is: three Gated DeltaNet
layers (q/k/v projections, a causal depthwise convolution over them with a 3-token state, a
per-head decay from A_log and dt_bias, a recurrent state per head in float32, mlx-lm's
gated-delta update, an RMSNorm per head) for every full-attention layer. Its caches are
models/cache.py's: a RecurrentLayerCache (conv state, recurrent state) per linear layer, a
KVLayerCache per attention layer. It splits across ranks by heads (`shard`) or by layers
(`pipeline`), as the built-in families do.

Nothing here is registered on import: tests register FAMILY and remove it afterwards.
"""

from dataclasses import dataclass, field, replace
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.nn.layers.distributed import shard_linear
from mlx_lm.models.base import create_attention_mask
from mlx_lm.models.gated_delta import gated_delta_update, normalize_qk

import toy_family as toy
from holo_mlx.models.base import ConfigError, Family, ShardingError, Span
from holo_mlx.models.cache import KVLayerCache, RecurrentLayerCache
from holo_mlx.models.pipeline import PipelineStage

LINEAR, FULL = "linear_attention", "full_attention"

CONFIG = {
    **toy.CONFIG,
    "architectures": ["ToyHybridForCausalLM"],
    "model_type": "toy_hybrid",
    "num_hidden_layers": 4,
    "layer_types": [LINEAR, LINEAR, LINEAR, FULL],
    "linear_num_heads": 2,
    "linear_head_dim": 8,
    "linear_conv_kernel": 4,
}


@dataclass
class HybridConfig(toy.ModelConfig):
    layer_types: list[str] = field(default_factory=lambda: [LINEAR, LINEAR, LINEAR, FULL])
    linear_num_heads: int = 2
    linear_head_dim: int = 8
    linear_conv_kernel: int = 4
    model_type: str = "toy_hybrid"

    @classmethod
    def from_dict(cls, values: dict) -> "HybridConfig":
        if values.get("model_type") != "toy_hybrid":
            raise ConfigError(f"not a toy_hybrid config (model_type={values.get('model_type')!r})")
        config = toy.ModelConfig.from_dict({**values, "model_type": "toy_vl"})
        extra = {name: values[name] for name in ("layer_types", "linear_num_heads", "linear_head_dim",
                                                 "linear_conv_kernel") if name in values}
        config = cls(**{**config.__dict__, **extra, "model_type": "toy_hybrid"})
        if len(config.layer_types) != config.num_hidden_layers or set(config.layer_types) - {LINEAR, FULL}:
            raise ConfigError(f"layer_types must name {config.num_hidden_layers} layers, each {LINEAR} or {FULL}")
        return config


def _rank_slice(array: mx.array, group: mx.distributed.Group) -> mx.array:
    """This rank's equal share of an array's first axis."""
    return mx.split(array, group.size(), axis=0)[group.rank()]


class GatedDeltaNet(nn.Module):
    """Linear attention with the gated delta rule; its state is two arrays per sequence."""

    def __init__(self, config: HybridConfig):
        super().__init__()
        dim = config.hidden_size
        self.heads, self.head_dim, self.kernel = config.linear_num_heads, config.linear_head_dim, config.linear_conv_kernel
        width = self.heads * self.head_dim
        self.q_proj = nn.Linear(dim, width, bias=False)
        self.k_proj = nn.Linear(dim, width, bias=False)
        self.v_proj = nn.Linear(dim, width, bias=False)
        self.a_proj = nn.Linear(dim, self.heads, bias=False)
        self.b_proj = nn.Linear(dim, self.heads, bias=False)
        # Depthwise causal convolution weights per channel of q, k and v: (channels, kernel).
        self.q_conv = mx.zeros((width, self.kernel))
        self.k_conv = mx.zeros((width, self.kernel))
        self.v_conv = mx.zeros((width, self.kernel))
        self.A_log = mx.zeros((self.heads,))
        self.dt_bias = mx.zeros((self.heads,))
        self.norm = nn.RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.o_proj = nn.Linear(width, dim, bias=False)

    def shard(self, group: mx.distributed.Group) -> None:
        """Heads split across the ranks: every per-head or per-channel tensor by its first axis."""
        if self.heads % group.size():
            raise ShardingError(f"linear_num_heads = {self.heads} does not split over {group.size()} ranks")
        for name in ("q_proj", "k_proj", "v_proj", "a_proj", "b_proj"):
            setattr(self, name, shard_linear(getattr(self, name), "all-to-sharded", group=group))
        self.o_proj = shard_linear(self.o_proj, "sharded-to-all", group=group)
        for name in ("q_conv", "k_conv", "v_conv", "A_log", "dt_bias"):
            setattr(self, name, _rank_slice(getattr(self, name), group))
        self.heads //= group.size()

    def __call__(self, x: mx.array, groups: list[toy.Group], layer: int) -> mx.array:
        projected = [self.q_proj(x), self.k_proj(x), self.v_proj(x)]
        decay_in, beta_in = self.a_proj(x), self.b_proj(x)
        weight = mx.concatenate([self.q_conv, self.k_conv, self.v_conv])  # (3 * width, kernel)
        outputs, start = [], 0
        for group in groups:
            batch, length = group.shape
            rows = slice(start, start + batch * length)
            start = rows.stop
            cache = group.caches[layer]
            mixed = mx.concatenate([p[rows] for p in projected], axis=-1).reshape(batch, length, -1)
            before = cache[0] if cache is not None and cache[0] is not None else \
                mx.zeros((batch, self.kernel - 1, mixed.shape[-1]), mixed.dtype)
            padded = mx.concatenate([before, mixed], axis=1)
            if cache is not None:
                cache[0] = padded[:, -(self.kernel - 1):]
            conv = sum(padded[:, tap:tap + length] * weight[:, tap] for tap in range(self.kernel))
            q, k, v = (part.reshape(batch, length, self.heads, self.head_dim)
                       for part in mx.split(nn.silu(conv), 3, axis=-1))
            q, k = normalize_qk(q, k, inv_scale=self.head_dim**-0.5, eps=1e-6)
            out, state = gated_delta_update(
                q, k, v, decay_in[rows].reshape(batch, length, -1), beta_in[rows].reshape(batch, length, -1),
                self.A_log, self.dt_bias, cache[1] if cache is not None else None)
            if cache is not None:
                cache[1] = state
            outputs.append(self.norm(out.astype(x.dtype)).reshape(batch * length, -1))
        return self.o_proj(mx.concatenate(outputs))


def shard_attention(attention: toy.Attention, group: mx.distributed.Group) -> None:
    if attention.kv_heads % group.size():
        raise ShardingError(f"num_key_value_heads = {attention.kv_heads} does not split over {group.size()} ranks")
    for name in ("q_proj", "k_proj", "v_proj"):
        setattr(attention, name, shard_linear(getattr(attention, name), "all-to-sharded", group=group))
    attention.o_proj = shard_linear(attention.o_proj, "sharded-to-all", group=group)
    attention.heads //= group.size()
    attention.kv_heads //= group.size()


def shard_mlp(mlp: toy.MLP, group: mx.distributed.Group) -> None:
    mlp.gate_proj = shard_linear(mlp.gate_proj, "all-to-sharded", group=group)
    mlp.up_proj = shard_linear(mlp.up_proj, "all-to-sharded", group=group)
    mlp.down_proj = shard_linear(mlp.down_proj, "sharded-to-all", group=group)


class HybridLayer(nn.Module):
    """A Gated DeltaNet layer (`linear_attn`) or a full-attention one (`self_attn`), then the MLP."""

    def __init__(self, config: HybridConfig, kind: str):
        super().__init__()
        self.kind = kind
        if kind == LINEAR:
            self.linear_attn = GatedDeltaNet(config)
        else:
            self.self_attn = toy.Attention(config)
        self.mlp = toy.MLP(config)
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def make_cache(self):
        return RecurrentLayerCache(2) if self.kind == LINEAR else KVLayerCache()

    def shard(self, group: mx.distributed.Group) -> None:
        if self.kind == LINEAR:
            self.linear_attn.shard(group)
        else:
            shard_attention(self.self_attn, group)
        shard_mlp(self.mlp, group)

    def __call__(self, x: mx.array, groups: list[toy.Group], layer: int) -> mx.array:
        mixer = self.linear_attn if self.kind == LINEAR else self.self_attn
        x = x + mixer(self.input_layernorm(x), groups, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class HybridDecoder(toy.Decoder):
    stage: PipelineStage | None = None  # this rank's layers under pipeline parallelism

    def __init__(self, config: HybridConfig):
        nn.Module.__init__(self)
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = [HybridLayer(config, kind) for kind in config.layer_types]
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def own_layers(self) -> list[tuple[int, HybridLayer]]:
        return [(index, layer) for index, layer in enumerate(self.layers) if layer is not None]

    def forward(self, spans: list[Span], last_only: bool) -> list[mx.array]:
        config, groups, layers = self.config, [], self.own_layers()
        for span in spans:
            caches = span.cache or [None] * len(layers)
            # The attention mask comes from an attention layer's cache (mlx-lm's qwen3_next does
            # the same); the recurrent layers need none: their rows are never padded.
            attention = next((cache for (_, layer), cache in zip(layers, caches) if layer.kind == FULL), None)
            mask = span.mask if span.mask is not None else create_attention_mask(span.embeds, attention)
            cos, sin = toy.rotary(span.positions, config.head_dim, config.rope_theta, span.embeds.dtype)
            groups.append(toy.Group(span.embeds.shape[:2], cos, sin, mask, caches))
        x = mx.concatenate([span.embeds.reshape(-1, config.hidden_size) for span in spans])
        if self.stage is not None:
            x = self.stage.receive(x)
        for position, (_, layer) in enumerate(layers):
            x = layer(x, groups, position)
        if self.stage is not None:
            x = self.stage.hand_on(x, None)
        x = self.norm(x)
        sizes = [group.shape[0] * group.shape[1] for group in groups]
        parts = mx.split(x, [sum(sizes[:i + 1]) for i in range(len(sizes) - 1)])
        hidden = [part.reshape(*group.shape, -1) for part, group in zip(parts, groups)]
        return [h[:, -1:] for h in hidden] if last_only else hidden


class HybridModel(toy.Model):
    def __init__(self, config: HybridConfig):
        nn.Module.__init__(self)
        self.config = config
        self.visual = toy.PatchProjector(config)
        self.model = HybridDecoder(config)

    def make_cache(self) -> list:
        return [layer.make_cache() for _, layer in self.model.own_layers()]

    def shard(self, group: mx.distributed.Group) -> None:
        """Tensor parallel: every layer by heads and MLP columns; embedding, tower and norm whole."""
        for layer in self.model.layers:
            layer.shard(group)

    def pipeline(self, group: mx.distributed.Group) -> None:
        """Pipeline parallel: this rank keeps its run of layers, the others become None."""
        decoder = self.model
        stage = PipelineStage.of(group, len(decoder.layers))
        decoder.layers = [layer if stage.start <= index < stage.end else None
                          for index, layer in enumerate(decoder.layers)]
        decoder.stage = stage


FAMILY = replace(
    toy.FAMILY, name="toy_hybrid", description="toy hybrid test family (Gated DeltaNet + attention)",
    model_types=("toy_hybrid",), architectures=("ToyHybridForCausalLM",),
    config=HybridConfig.from_dict, model=HybridModel,
)


def write_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random-weight toy_hybrid folder (toy_family's writer, this family's modules)."""
    return toy.write_checkpoint(path, seed, config=CONFIG, family=FAMILY)
