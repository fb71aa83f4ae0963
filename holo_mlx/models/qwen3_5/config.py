"""Model configuration of the Qwen3.5 hybrid (Holo3): config.json as transformers 5 writes it.

text_config names each layer's kind in `layer_types` (or gives `full_attention_interval`, from
which transformers derives it), the Gated DeltaNet widths in `linear_*`, and the rotary settings
in `rope_parameters` (rope_theta, partial_rotary_factor, mrope_section; the M-RoPE is always
interleaved). The MoE variant (`qwen3_5_moe`, Holo3-35B-A3B) replaces every layer's MLP by routed
experts and a gated shared expert (`num_experts`, `num_experts_per_tok`, `moe_intermediate_size`,
`shared_expert_intermediate_size`); its config has no `intermediate_size`. The vision tower is
Qwen3-VL's without DeepStack. What this family cannot run (attention biases, another rope type,
unrenormalized routing) is a ConfigError. Field names follow Hugging Face's.
"""

from dataclasses import dataclass, field

from ..base import ConfigError
from ..qwen2_5_vl.config import _pick
from ..qwen3_vl.config import VisionConfig as Qwen3VLVisionConfig
from ..qwen3_vl.config import from_sub_configs

ARCHITECTURES = ("Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration")
MODEL_TYPES = ("qwen3_5", "qwen3_5_moe")
LINEAR, FULL = "linear_attention", "full_attention"
IM_END = 248046  # Qwen3.5's <|im_end|>: the end of a turn when a config names no eos


@dataclass
class TextConfig:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    layer_types: list[str]
    linear_conv_kernel_dim: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    linear_num_key_heads: int
    linear_num_value_heads: int
    mrope_section: list[int]
    rope_theta: float
    partial_rotary_factor: float
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 262144
    tie_word_embeddings: bool = False
    intermediate_size: int = 0  # the dense MLP's; an MoE config has none
    # MoE: num_experts 0 is a dense model. Every layer's MLP is the expert block (transformers'
    # Qwen3.5 MoE has no decoder_sparse_step or mlp_only_layers).
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0

    @property
    def rotary_dim(self) -> int:
        """The leading dimensions of each attention head that rotate (transformers' rule)."""
        return int(self.head_dim * self.partial_rotary_factor)

    @classmethod
    def from_dict(cls, values: dict) -> "TextConfig":
        values = dict(values)
        # transformers' router always renormalizes its top k (it reads no norm_topk_prob); a config
        # asking otherwise would run differently here and there.
        if values.get("norm_topk_prob") is False:
            raise ConfigError("norm_topk_prob is false: Qwen3.5 MoE routing renormalizes the top-k weights")
        if values.get("attention_bias"):
            raise ConfigError("attention_bias is set: Qwen3.5 decoders have no attention biases")
        if values.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"hidden_act {values['hidden_act']!r}: Qwen3.5 decoders use silu")
        if not values.get("layer_types") and "num_hidden_layers" in values:
            interval = values.get("full_attention_interval", 4)
            values["layer_types"] = [FULL if (layer + 1) % interval == 0 else LINEAR
                                     for layer in range(values["num_hidden_layers"])]
        values.update(_rotary(values))
        config = cls(**_pick(cls, values))
        if len(config.layer_types) != config.num_hidden_layers or set(config.layer_types) - {LINEAR, FULL}:
            raise ConfigError(f"layer_types must name {config.num_hidden_layers} layers, each {LINEAR!r} or {FULL!r}")
        if config.num_experts:
            if not (0 < config.num_experts_per_tok <= config.num_experts and config.moe_intermediate_size > 0
                    and config.shared_expert_intermediate_size > 0):
                raise ConfigError("an MoE text_config needs num_experts_per_tok in 1..num_experts, "
                                  "moe_intermediate_size and shared_expert_intermediate_size")
        elif config.intermediate_size <= 0:
            raise ConfigError("a dense text_config needs intermediate_size")
        if config.linear_num_value_heads % config.linear_num_key_heads:
            raise ConfigError(f"linear_num_value_heads {config.linear_num_value_heads} is not a multiple of "
                              f"linear_num_key_heads {config.linear_num_key_heads}")
        if sum(config.mrope_section) * 2 != config.rotary_dim:
            raise ConfigError(f"mrope_section {config.mrope_section} does not cover the {config.rotary_dim} rotary "
                              f"dimensions (head_dim {config.head_dim} x partial_rotary_factor "
                              f"{config.partial_rotary_factor})")
        return config


def _rotary(text: dict) -> dict:
    """mrope_section, rope_theta and partial_rotary_factor from rope_parameters; the layout is
    never guessed (transformers interleaves the three axes, so a config saying otherwise is refused)."""
    rope = text.get("rope_parameters") or {}
    if "mrope_section" not in rope or "rope_theta" not in rope:
        raise ConfigError("text_config's rope_parameters need mrope_section and rope_theta; "
                          "refusing to guess the M-RoPE layout")
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ConfigError(f"rope_type {rope.get('rope_type', rope.get('type'))!r}: only Qwen3.5's default rope runs")
    if rope.get("mrope_interleaved") is False:
        raise ConfigError("mrope_interleaved is false: Qwen3.5 interleaves its M-RoPE axes")
    # transformers' default where a config gives none (Qwen3_5TextConfig keeps it for old configs)
    factor = rope.get("partial_rotary_factor", text.get("partial_rotary_factor", 0.25))
    return {"mrope_section": list(rope["mrope_section"]), "rope_theta": float(rope["rope_theta"]),
            "partial_rotary_factor": float(factor)}


def vision_config(values: dict) -> Qwen3VLVisionConfig:
    """Qwen3-VL's tower config with no DeepStack level (Qwen3.5's tower has none)."""
    if values.get("deepstack_visual_indexes"):
        raise ConfigError("vision_config has deepstack_visual_indexes: Qwen3.5's vision tower has no DeepStack")
    return Qwen3VLVisionConfig.from_dict({**values, "deepstack_visual_indexes": []})


@dataclass
class ModelConfig:
    text_config: TextConfig
    vision_config: Qwen3VLVisionConfig
    model_type: str = "qwen3_5"
    # transformers' Qwen3_5Config defaults (the Qwen3.5 vocabulary's ids)
    image_token_id: int = 248056
    video_token_id: int = 248057
    vision_start_token_id: int = 248053
    vision_end_token_id: int = 248054
    eos_token_id: list[int] = field(default_factory=lambda: [IM_END])
    quantization: dict | None = None

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        if values.get("model_type") not in MODEL_TYPES and not set(values.get("architectures") or []) & set(ARCHITECTURES):
            raise ConfigError(f"not a Qwen3.5 config (model_type={values.get('model_type')!r})")
        config = from_sub_configs(cls, values, "Qwen3.5", TextConfig.from_dict, vision_config, IM_END)
        moe = values.get("model_type") == "qwen3_5_moe" or ARCHITECTURES[1] in (values.get("architectures") or [])
        if moe != bool(config.text_config.num_experts):  # transformers builds what model_type says, whatever the fields
            raise ConfigError(f"model_type {values.get('model_type')!r} is MoE but text_config has no num_experts" if moe
                              else f"model_type {values.get('model_type')!r} is dense but text_config has num_experts")
        return config


def mlx_vlm_layout(raw: dict, config: ModelConfig) -> dict:
    """config.json of a converted folder: transformers 5's, which mlx-vlm 0.7.10 reads, with the
    rope settings written out in full (mlx-vlm requires each) and `full_attention_interval`, from
    which mlx-vlm places the attention layers, where the layers follow one."""
    text_config = config.text_config
    text = {key: value for key, value in raw["text_config"].items() if key != "dtype"}
    text["rope_parameters"] = {"rope_type": "default", "mrope_interleaved": True,
                               "mrope_section": text_config.mrope_section, "rope_theta": text_config.rope_theta,
                               "partial_rotary_factor": text_config.partial_rotary_factor}
    text["layer_types"] = text_config.layer_types
    text["tie_word_embeddings"] = text_config.tie_word_embeddings
    interval = text_config.layer_types.index(FULL) + 1 if FULL in text_config.layer_types else 0
    if interval and text_config.layer_types == [FULL if (layer + 1) % interval == 0 else LINEAR
                                                for layer in range(text_config.num_hidden_layers)]:
        text["full_attention_interval"] = interval
    out = {key: value for key, value in raw.items() if key != "dtype"}
    out["text_config"] = text
    out["tie_word_embeddings"] = text_config.tie_word_embeddings
    return out
