"""Model configuration read from either published Qwen2.5-VL config.json layout.

transformers 4.x (Holo1.5 as published): text fields at the root, `rope_scaling.mrope_section`,
vision `in_chans` / `spatial_patch_size`. transformers 5: `text_config` with `rope_parameters`,
vision `in_channels` / `patch_size`. Field names follow Hugging Face's.
"""

import inspect
from dataclasses import dataclass, field

from ..base import ConfigError


def _pick(cls, values: dict) -> dict:
    names = inspect.signature(cls).parameters
    return {k: v for k, v in values.items() if k in names}


@dataclass
class VisionConfig:
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    out_hidden_size: int
    fullatt_block_indexes: list[int]
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    tokens_per_second: int = 2
    rope_theta: float = 10000.0

    @classmethod
    def from_dict(cls, values: dict) -> "VisionConfig":
        values = dict(values)
        values.setdefault("in_channels", values.get("in_chans", 3))
        values.setdefault("patch_size", values.get("spatial_patch_size", 14))
        rope = values.get("rope_parameters") or {}
        values.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
        return cls(**_pick(cls, values))


@dataclass
class TextConfig:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    mrope_section: list[int]
    rope_theta: float = 1000000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 128000
    tie_word_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, values: dict) -> "TextConfig":
        values = dict(values)
        rope = values.get("rope_parameters") or values.get("rope_scaling") or {}
        if "mrope_section" not in rope:
            # A silent default here shifts image-token logits (mlx-vlm falls back to [24, 20, 20]).
            raise ConfigError(
                "config.json has no mrope_section (expected in rope_scaling or rope_parameters); "
                "refusing to guess the M-RoPE layout"
            )
        values["mrope_section"] = list(rope["mrope_section"])
        if "rope_theta" in rope:
            values["rope_theta"] = rope["rope_theta"]
        values.setdefault("num_key_value_heads", values.get("num_attention_heads"))
        config = cls(**_pick(cls, values))
        if sum(config.mrope_section) * 2 != config.head_dim:
            raise ConfigError(
                f"mrope_section {config.mrope_section} does not cover head_dim {config.head_dim}"
            )
        return config


@dataclass
class ModelConfig:
    text_config: TextConfig
    vision_config: VisionConfig
    model_type: str = "qwen2_5_vl"
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    eos_token_id: list[int] = field(default_factory=lambda: [151645])
    quantization: dict | None = None

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        model_type = values.get("model_type")
        architectures = values.get("architectures") or []
        if model_type != "qwen2_5_vl" and "Qwen2_5_VLForConditionalGeneration" not in architectures:
            raise ConfigError(
                f"unsupported architecture (model_type={model_type!r}, architectures={architectures}); "
                "holo-mlx runs Holo1.5 / Qwen2.5-VL checkpoints (model_type 'qwen2_5_vl')"
            )
        if "vision_config" not in values:
            raise ConfigError("config.json has no vision_config")
        # transformers 5 nests text fields; 4.x keeps them at the root.
        text_values = values.get("text_config") or values
        if "tie_word_embeddings" in values:
            text_values = {**text_values, "tie_word_embeddings": values["tie_word_embeddings"]}
        eos = text_values.get("eos_token_id", values.get("eos_token_id", 151645))
        try:
            text_config = TextConfig.from_dict(text_values)
            vision_config = VisionConfig.from_dict(values["vision_config"])
        except TypeError as error:  # a required field is missing
            raise ConfigError(f"incomplete config.json: {error}") from None
        top = _pick(cls, values)
        top.pop("text_config", None)
        top.pop("vision_config", None)
        top["eos_token_id"] = eos if isinstance(eos, list) else [eos]
        return cls(text_config=text_config, vision_config=vision_config, **top)


def mlx_vlm_layout(raw: dict, config: "ModelConfig") -> dict:
    """config.json in the transformers 4.x layout, the only one mlx-vlm 0.7.10 reads.

    Text fields go to the root (a transformers 5 `text_config` is flattened, root keys winning
    as in ModelConfig), M-RoPE goes to `rope_scaling`, and the vision config names its fields
    both ways.
    """
    text = raw.get("text_config") or {}
    out = {**text, **{key: value for key, value in raw.items() if key != "text_config"}}
    for key in ("rope_parameters", "dtype"):
        out.pop(key, None)
    out["model_type"] = "qwen2_5_vl"
    out["rope_scaling"] = {"type": "mrope", "mrope_section": config.text_config.mrope_section}
    out["rope_theta"] = config.text_config.rope_theta
    out["tie_word_embeddings"] = config.text_config.tie_word_embeddings  # mlx-vlm defaults to True
    vision = config.vision_config
    out["vision_config"] = {
        **raw["vision_config"],
        "model_type": "qwen2_5_vl",
        "in_chans": vision.in_channels,
        "in_channels": vision.in_channels,
        "spatial_patch_size": vision.patch_size,
        "patch_size": vision.patch_size,
    }
    return out
