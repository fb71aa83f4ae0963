"""Model configuration read from either published Qwen3-VL config.json layout, dense or MoE.

transformers 4.57 (Holo2 as published): `text_config` with `rope_scaling: {mrope_interleaved,
mrope_section, rope_type}` and `rope_theta` beside it. transformers 5: `rope_parameters` holding
all four. The rotary layout is never guessed: a missing or inconsistent setting is a ConfigError.
Field names follow Hugging Face's.
"""

from dataclasses import dataclass, field

from ..base import ConfigError
from ..qwen2_5_vl.config import _pick

ARCHITECTURES = ("Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration")
MODEL_TYPES = ("qwen3_vl", "qwen3_vl_moe")


@dataclass
class VisionConfig:
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    out_hidden_size: int
    num_position_embeddings: int
    deepstack_visual_indexes: list[int]
    in_channels: int = 3
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    hidden_act: str = "gelu_pytorch_tanh"
    rope_theta: float = 10000.0

    @classmethod
    def from_dict(cls, values: dict) -> "VisionConfig":
        values = dict(values)
        rope = values.get("rope_parameters") or {}
        values.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
        config = cls(**_pick(cls, values))
        if config.hidden_act != "gelu_pytorch_tanh":
            raise ConfigError(f"vision hidden_act {config.hidden_act!r}: Qwen3-VL towers use gelu_pytorch_tanh")
        if int(config.num_position_embeddings**0.5) ** 2 != config.num_position_embeddings:
            raise ConfigError(f"num_position_embeddings {config.num_position_embeddings} is not a square grid")
        return config


@dataclass
class TextConfig:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    mrope_section: list[int]
    rope_theta: float
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 262144
    tie_word_embeddings: bool = False
    # MoE (Holo2-30B-A3B); num_experts 0 is a dense model.
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = field(default_factory=list)

    def is_sparse(self, layer: int) -> bool:
        """Whether a layer's MLP is the expert block (the reference's rule)."""
        return (self.num_experts > 0 and layer not in self.mlp_only_layers
                and (layer + 1) % self.decoder_sparse_step == 0)

    @classmethod
    def from_dict(cls, values: dict) -> "TextConfig":
        values = dict(values)
        values.setdefault("num_experts", values.get("num_local_experts", 0))
        values.setdefault("num_key_value_heads", values.get("num_attention_heads"))
        if not values.get("head_dim") and "hidden_size" in values and "num_attention_heads" in values:
            values["head_dim"] = values["hidden_size"] // values["num_attention_heads"]
        values["mrope_section"], values["rope_theta"] = _rotary(values)
        if values.get("attention_bias"):
            raise ConfigError("attention_bias is set: Qwen3-VL decoders have no attention biases")
        config = cls(**_pick(cls, values))
        if sum(config.mrope_section) * 2 != config.head_dim:
            raise ConfigError(f"mrope_section {config.mrope_section} does not cover head_dim {config.head_dim}")
        if config.num_experts and not (0 < config.num_experts_per_tok <= config.num_experts
                                       and config.moe_intermediate_size > 0):
            raise ConfigError("an MoE text_config needs num_experts_per_tok in 1..num_experts and moe_intermediate_size")
        return config


def _rotary(text: dict) -> tuple[list[int], float]:
    """(mrope_section, rope_theta) from rope_parameters (transformers 5) or rope_scaling and
    rope_theta (4.57); interleaving must be declared, as the blocked layout is Qwen2.5-VL's."""
    rope = text.get("rope_parameters") or text.get("rope_scaling")
    if not rope or "mrope_section" not in rope:
        raise ConfigError("text_config has no mrope_section (expected in rope_scaling or rope_parameters); "
                          "refusing to guess the M-RoPE layout")
    if rope.get("mrope_interleaved") is not True:
        raise ConfigError("text_config's rope settings do not say mrope_interleaved: true, which Qwen3-VL "
                          "checkpoints declare; refusing to guess the M-RoPE layout")
    thetas = {value for value in (rope.get("rope_theta"), text.get("rope_theta")) if value is not None}
    if len(thetas) != 1:
        raise ConfigError("text_config gives no rope_theta" if not thetas else
                          f"text_config gives two rope_theta values {sorted(thetas)}")
    return list(rope["mrope_section"]), float(thetas.pop())


@dataclass
class ModelConfig:
    text_config: TextConfig
    vision_config: VisionConfig
    model_type: str = "qwen3_vl"
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    eos_token_id: list[int] = field(default_factory=lambda: [151645])
    quantization: dict | None = None

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        if values.get("model_type") not in MODEL_TYPES and not set(values.get("architectures") or []) & set(ARCHITECTURES):
            raise ConfigError(f"not a Qwen3-VL config (model_type={values.get('model_type')!r})")
        return from_sub_configs(cls, values, "Qwen3-VL", TextConfig.from_dict, VisionConfig.from_dict, 151645)


def from_sub_configs(cls, values: dict, generation: str, read_text, read_vision, default_eos: int):
    """A model config (`cls`) from a config.json with text_config and vision_config beside the token
    ids, as Qwen3-VL and Qwen3.5 publish theirs: the root's tie_word_embeddings applied, the end
    token from either level, the tower's output width checked against the decoder's."""
    if "text_config" not in values or "vision_config" not in values:
        raise ConfigError(f"config.json needs text_config and vision_config (a {generation} checkpoint has both)")
    text = dict(values["text_config"])
    if "tie_word_embeddings" in values:  # the root's value is the one transformers applies
        text["tie_word_embeddings"] = values["tie_word_embeddings"]
    eos = text.get("eos_token_id") or values.get("eos_token_id") or default_eos
    try:
        text_config = read_text(text)
        vision_config = read_vision(values["vision_config"])
    except TypeError as error:  # a required field is missing
        raise ConfigError(f"incomplete config.json: {error}") from None
    if vision_config.out_hidden_size != text_config.hidden_size:
        raise ConfigError(f"vision out_hidden_size {vision_config.out_hidden_size} is not the decoder's "
                          f"hidden_size {text_config.hidden_size}")
    top = _pick(cls, values)
    top.pop("text_config", None)
    top.pop("vision_config", None)
    top["eos_token_id"] = eos if isinstance(eos, list) else [eos]
    return cls(text_config=text_config, vision_config=vision_config, **top)


def mlx_vlm_layout(raw: dict, config: ModelConfig) -> dict:
    """config.json in the transformers 4.57 layout, which mlx-vlm 0.7.10 reads: `rope_scaling` and
    `rope_theta` in text_config, the vision config's model_type the model's."""
    text = {key: value for key, value in raw["text_config"].items() if key not in ("rope_parameters", "dtype")}
    text["rope_scaling"] = {"rope_type": "default", "mrope_interleaved": True,
                            "mrope_section": config.text_config.mrope_section}
    text["rope_theta"] = config.text_config.rope_theta
    text["head_dim"] = config.text_config.head_dim
    text["tie_word_embeddings"] = config.text_config.tie_word_embeddings  # mlx-vlm reads it here
    if config.text_config.num_experts:
        text["num_experts"] = config.text_config.num_experts
    out = {key: value for key, value in raw.items() if key != "dtype"}
    out["text_config"] = text
    out["tie_word_embeddings"] = config.text_config.tie_word_embeddings
    out["vision_config"] = {**raw["vision_config"], "model_type": raw.get("model_type", config.model_type)}
    return out
