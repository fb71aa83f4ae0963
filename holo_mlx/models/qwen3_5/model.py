"""Holo3 / Qwen3.5: Qwen3-VL's vision tower without DeepStack and the hybrid decoder."""

from ..qwen3_vl.vision import VisionModel
from ..vlm import Model
from .config import ModelConfig
from .language import language_model


def build(config: ModelConfig) -> Model:
    return Model(config, VisionModel(config.vision_config), language_model(config.text_config))
