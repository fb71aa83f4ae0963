"""Holo1.5 / Qwen2.5-VL: the window-attention vision tower and the Qwen2 decoder."""

from ..vlm import Model
from .config import ModelConfig
from .language import language_model
from .vision import VisionModel


def build(config: ModelConfig) -> Model:
    return Model(config, VisionModel(config.vision_config), language_model(config.text_config))
