"""Holo1.5 / Qwen2.5-VL: the vision tower feeding image features into the decoder's embeddings.

The model holds weights only. Positions, caches and images belong to the caller, so one loaded
model serves many requests at once.
"""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.cache import KVCache

from .config import ModelConfig
from ..base import Span
from .language import LanguageModel
from .rope import rope_index
from .vision import VisionModel


class Model(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.vision_tower = VisionModel(config.vision_config)
        self.language_model = LanguageModel(config.text_config)

    def encode_images(self, pixel_values: list, grids: list[tuple[int, int, int]]) -> mx.array:
        """Features for every image token of these images, in order: (tokens, hidden_size)."""
        pixels = mx.array(np.concatenate(pixel_values)).astype(self.dtype)
        return self.vision_tower(pixels, grids)

    @property
    def dtype(self) -> mx.Dtype:
        # The final norm is never quantized, so its dtype is the compute dtype.
        return self.language_model.model.norm.weight.dtype

    def embed(self, input_ids: list[int], image_features: mx.array | None = None) -> mx.array:
        """Token embeddings (1, length, hidden) with image features placed at the image tokens."""
        ids = np.asarray(input_ids)
        embeds = self.language_model.model.embed_tokens(mx.array(ids))
        slots = np.flatnonzero(ids == self.config.image_token_id)
        if len(slots) != (0 if image_features is None else image_features.shape[0]):
            raise ValueError(
                f"{len(slots)} image tokens in the prompt but "
                f"{0 if image_features is None else image_features.shape[0]} image features"
            )
        if len(slots):
            embeds[mx.array(slots)] = image_features.astype(embeds.dtype)
        return embeds[None]

    def embed_tokens(self, tokens: mx.array) -> mx.array:
        return self.language_model.model.embed_tokens(tokens)

    def positions(self, input_ids: list[int], grids: list[tuple[int, int, int]]) -> tuple[np.ndarray, int]:
        return rope_index(input_ids, grids, image_token_id=self.config.image_token_id,
                          spatial_merge_size=self.config.vision_config.spatial_merge_size)

    def make_cache(self) -> list[KVCache]:
        return [KVCache() for _ in self.language_model.model.layers]

    def hidden(self, spans: list[Span], last_only: bool = False) -> list[mx.array]:
        return self.language_model.model.forward(spans, last_only)

    def logits(self, hidden: mx.array) -> mx.array:
        return self.language_model.logits(hidden)

    def __call__(self, inputs_embeds: mx.array, positions: mx.array, cache=None) -> mx.array:
        """Logits (batch, length, vocab) for embeddings at M-RoPE positions (3, batch, length)."""
        hidden = self.language_model.model(inputs_embeds, positions, cache)
        return self.language_model.logits(hidden)
