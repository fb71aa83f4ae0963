"""toy_vl: a second model family, small and unlike Qwen2.5-VL, to prove families are plug-ins.

Written like an mlx-lm model file: a config dataclass with Hugging Face field names, modules whose
attribute names are the checkpoint keys, a `sanitize`. It differs from Qwen2.5-VL wherever the
engine could assume Qwen: a flat config.json (Llama-style, no text_config), ONE rotary position
axis (positions (1, batch, length), delta 0), no biases, tied embeddings, a different vocabulary
size, image token (<|vision_pad|>), chat template, end token, image grid (8-pixel patches, 16x16
pixels per image token, no temporal repeat) and localization prompt and schema.

Nothing here is registered on import: tests register FAMILY and remove it afterwards.
"""

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.models.base import create_attention_mask

from holo_mlx.image import ImageProcessorConfig
from holo_mlx.models.base import ConfigError, Family, Span
from holo_mlx.models.cache import KVLayerCache

IMAGE_TOKEN_ID = 151654  # <|vision_pad|>: Qwen2.5-VL uses <|image_pad|> (151655)
EOS_TOKEN_ID = 151643  # <|endoftext|>

# Not Qwen's ChatML: "### role" headers, images as one <|vision_pad|> each (expanded per image token).
CHAT_TEMPLATE = (
    "{% for message in messages %}### {{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<|vision_pad|>"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}\n\n{% endfor %}"
    "{% if add_generation_prompt %}### assistant\n{% endif %}"
)

CONFIG = {
    "architectures": ["ToyVLForCausalLM"],
    "model_type": "toy_vl",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 151936,  # Qwen2's small-model size, not Qwen2.5-VL's 152064
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
    "image_token_id": IMAGE_TOKEN_ID,
    "eos_token_id": EOS_TOKEN_ID,
    "vision_config": {"patch_size": 8, "merge_size": 2, "num_channels": 3,
                      "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                      "min_pixels": 16 * 16 * 4, "max_pixels": 256 * 256},
}


@dataclass
class VisionConfig:
    patch_size: int = 8
    merge_size: int = 2  # merge_size x merge_size patches make one image token
    num_channels: int = 3
    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    min_pixels: int = 1024
    max_pixels: int = 65536

    @property
    def token_dim(self) -> int:
        """Pixel values per image token: merge^2 patches of C x P x P (one frame, no temporal repeat)."""
        return self.merge_size**2 * self.num_channels * self.patch_size**2


@dataclass
class ModelConfig:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    image_token_id: int
    eos_token_id: list[int]
    vision_config: VisionConfig
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = True
    model_type: str = "toy_vl"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def text_config(self) -> "ModelConfig":
        # A flat (Llama-style) config: the text fields the engine reads sit at the root.
        return self

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        if values.get("model_type") != "toy_vl" and "ToyVLForCausalLM" not in (values.get("architectures") or []):
            raise ConfigError(f"not a toy_vl config (model_type={values.get('model_type')!r})")
        names = set(cls.__dataclass_fields__) - {"vision_config", "eos_token_id"}
        eos = values.get("eos_token_id", EOS_TOKEN_ID)
        try:
            return cls(**{k: v for k, v in values.items() if k in names},
                       eos_token_id=eos if isinstance(eos, list) else [eos],
                       vision_config=VisionConfig(**values.get("vision_config", {})))
        except TypeError as error:
            raise ConfigError(f"incomplete toy_vl config.json: {error}") from None


def rotary(positions: mx.array, head_dim: int, theta: float, dtype: mx.Dtype) -> tuple[mx.array, mx.array]:
    """cos/sin (batch, 1, length, head_dim) of one position axis, rotate-half convention."""
    if positions.ndim != 3 or positions.shape[0] != 1:
        # Say so rather than broadcast: a caller that sends Qwen's 3 axes has assumed Qwen.
        raise ValueError(f"toy_vl has one rotary position axis: positions must be (1, batch, length), "
                         f"got {tuple(positions.shape)}")
    inv_freq = mx.array(1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    angles = positions[0, :, :, None].astype(mx.float32) * inv_freq
    angles = mx.concatenate([angles, angles], axis=-1)[:, None]
    return mx.cos(angles).astype(dtype), mx.sin(angles).astype(dtype)


def rotate(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    half = x.shape[-1] // 2
    return x * cos + mx.concatenate([-x[..., half:], x[..., :half]], axis=-1) * sin


@dataclass
class Group:
    """One span as each layer sees it: its rows' shape, rotary tables, mask and per-layer caches."""

    shape: tuple[int, int]
    cos: mx.array
    sin: mx.array
    mask: mx.array | str | None
    caches: list


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        dim, self.head_dim = config.hidden_size, config.head_dim
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.q_proj = nn.Linear(dim, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, dim, bias=False)

    def __call__(self, x: mx.array, groups: list[Group], layer: int) -> mx.array:
        """x: (rows, dim), the rows of every group back to back; attention stays within a group."""
        queries, keys, values = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        outputs, start = [], 0
        for group in groups:
            batch, length = group.shape
            rows = slice(start, start + batch * length)
            start = rows.stop

            def heads(t, n):
                return t[rows].reshape(batch, length, n, -1).transpose(0, 2, 1, 3)

            q = rotate(heads(queries, self.heads), group.cos, group.sin)
            k = rotate(heads(keys, self.kv_heads), group.cos, group.sin)
            v = heads(values, self.kv_heads)
            cache = group.caches[layer]
            if cache is not None:
                k, v = cache.update_and_fetch(k, v)
            out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.head_dim**-0.5, mask=group.mask)
            outputs.append(out.transpose(0, 2, 1, 3).reshape(batch * length, -1))
        return self.o_proj(mx.concatenate(outputs))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def __call__(self, x: mx.array, groups: list[Group], layer: int) -> mx.array:
        x = x + self.self_attn(self.input_layernorm(x), groups, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = [DecoderLayer(config) for _ in range(config.num_hidden_layers)]
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, spans: list[Span], last_only: bool) -> list[mx.array]:
        """Final hidden states of independent spans, their rows through the projections together."""
        config, groups = self.config, []
        for span in spans:
            caches = span.cache or [None] * len(self.layers)
            # Mask None: causal over the cache (left padding of a BatchKVCache included), as mlx-lm does.
            mask = span.mask if span.mask is not None else create_attention_mask(span.embeds, caches[0])
            cos, sin = rotary(span.positions, config.head_dim, config.rope_theta, span.embeds.dtype)
            groups.append(Group(span.embeds.shape[:2], cos, sin, mask, caches))
        x = mx.concatenate([span.embeds.reshape(-1, config.hidden_size) for span in spans])
        for index, layer in enumerate(self.layers):
            x = layer(x, groups, index)
        x = self.norm(x)
        sizes = np.cumsum([group.shape[0] * group.shape[1] for group in groups])[:-1].tolist()
        hidden = [part.reshape(*group.shape, -1) for part, group in zip(mx.split(x, sizes), groups)]
        return [h[:, -1:] for h in hidden] if last_only else hidden


class PatchProjector(nn.Module):
    """The whole "vision tower": one linear map of each image token's pixels, then an RMSNorm."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.patch_proj = nn.Linear(config.vision_config.token_dim, config.hidden_size, bias=False)
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def __call__(self, pixels: mx.array) -> mx.array:
        return self.norm(self.patch_proj(pixels))


class Model(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.visual = PatchProjector(config)
        self.model = Decoder(config)

    @property
    def dtype(self) -> mx.Dtype:
        return self.model.norm.weight.dtype

    def encode_images(self, pixel_values: list[np.ndarray], grids: list[tuple[int, int, int]]) -> mx.array:
        # holo_mlx.image.patchify keeps each merge block's patches contiguous: one token per row group.
        expected = sum(t * h * w for t, h, w in grids) // self.config.vision_config.merge_size**2
        pixels = mx.array(np.concatenate(pixel_values)).reshape(-1, self.config.vision_config.token_dim)
        if pixels.shape[0] != expected:
            raise ValueError(f"pixel values for {pixels.shape[0]} image tokens, grids {grids} need {expected}")
        return self.visual(pixels.astype(self.dtype))

    def embed(self, input_ids: list[int], image_features: mx.array | None) -> tuple[mx.array, None]:
        """Embeddings with image features in place; no DeepStack."""
        ids = np.asarray(input_ids)
        embeds = self.model.embed_tokens(mx.array(ids))
        slots = np.flatnonzero(ids == self.config.image_token_id)
        count = 0 if image_features is None else image_features.shape[0]
        if len(slots) != count:
            raise ValueError(f"{len(slots)} image tokens in the prompt but {count} image features")
        if count:
            embeds[mx.array(slots)] = image_features.astype(embeds.dtype)
        return embeds[None], None

    def embed_tokens(self, tokens: mx.array) -> mx.array:
        return self.model.embed_tokens(tokens)

    def positions(self, input_ids: list[int], grids: list[tuple[int, int, int]]) -> tuple[np.ndarray, int]:
        # One axis, image tokens included: position = index, so decoding continues at the cache offset.
        return np.arange(len(input_ids))[None], 0

    def make_cache(self) -> list[KVLayerCache]:
        return [KVLayerCache() for _ in self.model.layers]

    def hidden(self, spans: list[Span], last_only: bool = False) -> list[mx.array]:
        return self.model.forward(spans, last_only)

    def logits(self, hidden: mx.array) -> mx.array:
        return self.model.embed_tokens.as_linear(hidden)  # tied embeddings


def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Drop what no module owns: HF rotary buffers and the tied lm_head copy some exporters write."""
    return {key: value for key, value in weights.items()
            if "rotary_emb.inv_freq" not in key and key != "lm_head.weight"}


def mlx_config(raw: dict, config: ModelConfig) -> dict:
    return dict(raw)  # the folder layout is already the one this family reads


def image_processor(path: Path) -> ImageProcessorConfig:
    """The toy's image settings live in its config.json (no preprocessor_config.json)."""
    vision = VisionConfig(**json.loads((Path(path) / "config.json").read_text()).get("vision_config", {}))
    return ImageProcessorConfig(image_mean=tuple(vision.image_mean), image_std=tuple(vision.image_std),
                                min_pixels=vision.min_pixels, max_pixels=vision.max_pixels,
                                patch_size=vision.patch_size, temporal_patch_size=1, merge_size=vision.merge_size)


def localization_prompt(target: str) -> str:
    return f"Point at {target}. Answer {{\"x\": column, \"y\": row}}."


def localization_schema(width: int, height: int) -> dict:
    """x in the image's [1/8, 1/4] of its width, y likewise: bounds a Qwen-schema answer would
    rarely meet, so a test can tell which family's schema was enforced."""
    def axis(size: int) -> dict:
        return {"type": "integer", "minimum": size // 8, "maximum": size // 4}
    return {"type": "object", "properties": {"x": axis(width), "y": axis(height)},
            "required": ["x", "y"], "additionalProperties": False}


FAMILY = Family(
    name="toy_vl", description="toy VL test family", model_types=("toy_vl",), architectures=("ToyVLForCausalLM",),
    config=ModelConfig.from_dict, model=Model, sanitize=sanitize, mlx_config=mlx_config,
    image_processor=image_processor, image_placeholder="<|vision_pad|>", localization_prompt=localization_prompt,
    localization_schema=localization_schema,
)


def write_checkpoint(path: Path, seed: int = 0, config: dict = CONFIG, family: Family | None = None) -> Path:
    """A random-weight toy_vl folder (or another toy family's, from its config.json): config.json,
    model.safetensors (HF names, plus the keys sanitize must drop), and the real Qwen tokenizer
    files with the toy's chat template."""
    from holo_mlx.testing import tokenizer_files_dir

    family = family or FAMILY
    path.mkdir(parents=True, exist_ok=True)
    mx.random.seed(seed)
    weights = {}
    for name, value in tree_flatten(family.model(family.config(config)).parameters()):
        if name.endswith("norm.weight"):
            weights[name] = 1.0 + 0.1 * mx.random.normal(value.shape)
        elif name == "model.embed_tokens.weight":
            weights[name] = 0.1 * mx.random.normal(value.shape)
        else:
            # Large enough that attention and MLP outweigh the token's own embedding: otherwise a tied
            # model greedily repeats its last token and a decode test would check little.
            weights[name] = 0.2 * mx.random.normal(value.shape)
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    for name in [name for name in weights if name.endswith(".self_attn.q_proj.weight")]:
        weights[name.replace("q_proj.weight", "rotary_emb.inv_freq")] = mx.zeros((head_dim // 2,))
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    (path / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        shutil.copy(tokenizer_files_dir() / name, path / name)
    tokenizer_config = json.loads((tokenizer_files_dir() / "tokenizer_config.json").read_text())
    tokenizer_config.update(chat_template=CHAT_TEMPLATE, eos_token="<|endoftext|>")
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return path
