"""Holo1.5 = Qwen2.5-VL: window-attention vision tower, Qwen2 decoder with M-RoPE."""

from ...agent import localization_prompt, localization_schema
from ...image import ImageProcessorConfig
from ..base import Family
from .config import ModelConfig, mlx_vlm_layout
from .model import build
from .weights import sanitize

FAMILY = Family(
    name="qwen2_5_vl", description="Holo1.5 / Qwen2.5-VL",
    model_types=("qwen2_5_vl",), architectures=("Qwen2_5_VLForConditionalGeneration",),
    config=ModelConfig.from_dict, model=build, sanitize=sanitize, mlx_config=mlx_vlm_layout,
    image_processor=ImageProcessorConfig.from_pretrained,
    image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
    localization_prompt=localization_prompt, localization_schema=localization_schema,
)
