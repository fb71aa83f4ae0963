"""A vision tower feeding image features into a decoder: the model every family builds.

The model holds weights only. Positions, caches and images belong to the caller, so one loaded
model serves many requests at once. A tower returns one row per image token; a row wider than
the decoder carries DeepStack levels after the embedding (Qwen3-VL), each added to the hidden
states at that token after one of the first decoder layers.
"""

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .base import Span
from .decoder import LanguageModel
from .rope import rope_index


class Model(nn.Module):
    def __init__(self, config, vision_tower: nn.Module, language_model: LanguageModel):
        super().__init__()
        self.config = config
        self.vision_tower = vision_tower
        self.language_model = language_model

    def encode_images(self, pixel_values: list, grids: list[tuple[int, int, int]]) -> mx.array:
        """Features for every image token of these images, in order: (tokens, width)."""
        pixels = mx.array(np.concatenate(pixel_values)).astype(self.dtype)
        return self.vision_tower(pixels, grids)

    @property
    def dtype(self) -> mx.Dtype:
        # The final norm is never quantized, so its dtype is the compute dtype.
        return self.language_model.model.norm.weight.dtype

    def embed(self, input_ids: list[int], image_features: mx.array | None = None) -> tuple[mx.array, mx.array | None]:
        """Token embeddings (1, length, hidden) with image features placed at the image tokens, and
        the DeepStack input (levels, 1, length, hidden), zero at text tokens (None without it)."""
        ids = np.asarray(input_ids)
        embeds = self.language_model.model.embed_tokens(mx.array(ids))
        slots = np.flatnonzero(ids == self.config.image_token_id)
        count = 0 if image_features is None else image_features.shape[0]
        if len(slots) != count:
            raise ValueError(f"{len(slots)} image tokens in the prompt but {count} image features")
        if not len(slots):
            return embeds[None], None
        hidden = embeds.shape[-1]
        features = image_features.astype(embeds.dtype).reshape(count, -1, hidden)  # (tokens, 1 + levels, hidden)
        embeds[mx.array(slots)] = features[:, 0]
        if features.shape[1] == 1:
            return embeds[None], None
        deepstack = mx.zeros((len(ids), features.shape[1] - 1, hidden), embeds.dtype)
        deepstack[mx.array(slots)] = features[:, 1:]
        return embeds[None], deepstack.transpose(1, 0, 2)[:, None]

    def embed_tokens(self, tokens: mx.array) -> mx.array:
        return self.language_model.model.embed_tokens(tokens)

    def positions(self, input_ids: list[int], grids: list[tuple[int, int, int]]) -> tuple[np.ndarray, int]:
        return rope_index(input_ids, grids, image_token_id=self.config.image_token_id,
                          spatial_merge_size=self.config.vision_config.spatial_merge_size)

    def make_cache(self) -> list:
        """One cache per decoder layer this process runs (all of them but under pipeline parallelism),
        of the kind the layer declares (models/cache.py)."""
        return [layer.make_cache() for _, layer in self.language_model.model.own_layers()]

    def hidden(self, spans: list[Span], last_only: bool = False) -> list[mx.array]:
        return self.language_model.model.forward(spans, last_only)

    def logits(self, hidden: mx.array) -> mx.array:
        return self.language_model.logits(hidden)

    def shard(self, group: mx.distributed.Group) -> None:
        """Tensor parallelism: every decoder layer split across `group`. The vision tower, the
        embedding, the final norm and lm_head stay whole on every rank, which encodes images and
        samples the same tokens itself (docs/scale-out.md weighs this)."""
        self.language_model.model.shard(group)

    def pipeline(self, group: mx.distributed.Group) -> None:
        """Pipeline parallelism: this rank's run of decoder layers; the vision tower, the embedding,
        the final norm and lm_head stay whole on every rank, as under shard()."""
        self.language_model.model.pipeline(group)

    def __call__(self, inputs_embeds: mx.array, positions: mx.array, cache=None,
                 deepstack: mx.array | None = None) -> mx.array:
        """Logits (batch, length, vocab) for embeddings at M-RoPE positions (3, batch, length)."""
        hidden = self.language_model.model(inputs_embeds, positions, cache, deepstack=deepstack)
        return self.language_model.logits(hidden)
