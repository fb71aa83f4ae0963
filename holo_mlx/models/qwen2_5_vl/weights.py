"""Weight names: every published Qwen2.5-VL key layout mapped onto mlx-vlm's.

Our folders use mlx-vlm's names so each project loads the other's conversions:
  transformers 5       model.layers.* / model.embed_tokens / visual.* / lm_head.*
  transformers 4.52+   model.language_model.* / model.visual.* / lm_head.*
  mlx-vlm (ours)       language_model.model.* / vision_tower.* / language_model.lm_head.*
"""

import mlx.core as mx

_PREFIXES = (  # (Hugging Face prefix, mlx-vlm prefix); the longest prefixes first
    ("model.language_model.", "language_model.model."),
    ("model.visual.", "vision_tower."),
    ("visual.", "vision_tower."),
    ("model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)
MLX_PREFIXES = ("language_model.", "vision_tower.")
PATCH_EMBED_KEY = "vision_tower.patch_embed.proj.weight"


def to_mlx_name(key: str) -> str | None:
    """mlx-vlm name for a checkpoint key; None for keys no module owns (e.g. rotary buffers)."""
    if "rotary_emb.inv_freq" in key or key.endswith("position_ids"):
        return None
    if key.startswith(MLX_PREFIXES):
        return key
    for hf_prefix, mlx_prefix in _PREFIXES:
        if key.startswith(hf_prefix):
            return mlx_prefix + key[len(hf_prefix):]
    raise KeyError(f"unexpected weight {key!r}: not a Qwen2.5-VL or Qwen3-VL checkpoint key")


def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Rename to mlx-vlm keys; move the Conv3d kernel from torch (O, C, T, H, W) to MLX (O, T, H, W, C)."""
    out = {}
    for key, value in weights.items():
        name = to_mlx_name(key)
        if name is None:
            continue
        if name == PATCH_EMBED_KEY and not key.startswith(MLX_PREFIXES):
            value = value.transpose(0, 2, 3, 4, 1)
        out[name] = value
    return out
