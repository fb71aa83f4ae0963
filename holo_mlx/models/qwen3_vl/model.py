"""Holo2 / Qwen3-VL: the DeepStack vision tower and the Qwen3 decoder, dense or MoE."""

from ..vlm import Model
from .config import ModelConfig
from .language import language_model
from .vision import VisionModel


def build(config: ModelConfig) -> Model:
    return Model(config, VisionModel(config.vision_config), language_model(config.text_config))
