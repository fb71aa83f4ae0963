"""Holo2 = Qwen3-VL (dense and MoE): DeepStack vision tower, Qwen3 decoder with interleaved M-RoPE.

Holo2 thinks before it answers (its chat template opens `<think>`) and answers positions
normalized to 0-1000 on each axis; its processor resizes to multiples of 32 (patch 16, merge 2).
"""

from functools import partial

from ...agent import holo2_localization_prompt, holo2_localization_schema
from ...coordinates import NORMALIZED_1000
from ...image import ImageProcessorConfig
from ..base import Family
from .config import ARCHITECTURES, MODEL_TYPES, ModelConfig, mlx_vlm_layout
from .model import build
from .weights import quantizable, sanitize

# Qwen3-VL's preprocessor_config.json (Holo2's): what a folder without one gets.
PROCESSOR = ImageProcessorConfig(image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5),
                                 min_pixels=65_536, max_pixels=16_777_216, patch_size=16)

FAMILY = Family(
    name="qwen3_vl", description="Holo2 / Qwen3-VL, dense and MoE",
    model_types=MODEL_TYPES, architectures=ARCHITECTURES,
    config=ModelConfig.from_dict, model=build, sanitize=sanitize, mlx_config=mlx_vlm_layout,
    quantizable=quantizable,
    image_processor=partial(ImageProcessorConfig.from_pretrained, defaults=PROCESSOR),
    image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
    localization_prompt=holo2_localization_prompt, localization_schema=holo2_localization_schema,
    coordinates=NORMALIZED_1000,
    # Hcompany's Holo2 cookbook resizes with the processor's own limits (65,536 to 16,777,216 pixels).
    max_side=None, max_pixels=None,
)
