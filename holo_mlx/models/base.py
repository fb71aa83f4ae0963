"""The interface between a model family and the rest of holo-mlx.

`Family` says how to read a checkpoint (config, weight names, image processor), which of its
weights may be quantized, and how its checkpoints expect to be prompted (localization prompt and
schema, coordinate convention, tool calls). `VisionLanguageModel` is what the engine and the
loader call on a built model (the loader: to split it across ranks): nothing else of a family's
modules is reached from outside holo_mlx/models/.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import mlx.core as mx
import numpy as np

from ..agent import Harness, SurferH
from ..coordinates import RESIZED_PIXELS, CoordinateSpace
from ..image import MAX_PIXELS, MAX_SIDE
from ..tool_format import HERMES, ToolFormat


class ConfigError(ValueError):
    pass


class ShardingError(ValueError):
    """A model cannot be split over this many ranks (its heads, widths or layers do not divide)."""


@dataclass
class Span:
    """Rows that attend together in a decoder pass: a prefill chunk, or the decode batch."""

    embeds: mx.array  # (batch, length, dim)
    positions: mx.array  # (axes, batch, length) rotary positions
    cache: list | None = None  # one KV cache per layer
    mask: mx.array | str | None = None  # None: causal over the cache
    # Qwen3-VL's DeepStack: (levels, batch, length, hidden) added to the hidden states after each
    # of the first `levels` decoder layers (zero outside image tokens); None for text.
    deepstack: mx.array | None = None


class VisionLanguageModel(Protocol):
    """A built model: weights only, every per-request state (caches, positions) is the caller's.

    `config` has `text_config.vocab_size`, `text_config.hidden_size`,
    `text_config.max_position_embeddings`, `image_token_id` and `eos_token_id` (a list).
    """

    config: Any
    dtype: mx.Dtype

    def encode_images(self, pixel_values: list[np.ndarray], grids: list[tuple[int, int, int]]) -> mx.array:
        """Features for every image token of these images, in order: (tokens, width), one row per
        token whatever the family packs in it (Qwen3-VL: the merger's and each DeepStack level's)."""

    def embed(self, input_ids: list[int], image_features: mx.array | None) -> tuple[mx.array, mx.array | None]:
        """Token embeddings (1, length, hidden) with image features placed at the image tokens, and
        the span's `deepstack` input (None for a family without DeepStack, or without images)."""

    def embed_tokens(self, tokens: mx.array) -> mx.array:
        """Embeddings of token ids of any shape (decode steps feed sampled tokens back)."""

    def positions(self, input_ids: list[int], grids: list[tuple[int, int, int]]) -> tuple[np.ndarray, int]:
        """Rotary positions (axes, length) of a prompt and the delta that maps a cache offset to the
        next decode position (every axis advances together while decoding)."""

    def make_cache(self) -> list:
        """Fresh per-layer caches for one sequence (mlx-lm cache objects)."""

    def hidden(self, spans: list, last_only: bool = False) -> list[mx.array]:
        """Final hidden states of independent `Span`s in one decoder pass."""

    def logits(self, hidden: mx.array) -> mx.array:
        """Vocabulary logits of hidden states."""

    def shard(self, group: mx.distributed.Group) -> None:
        """Tensor parallelism, on the lazily loaded weights: split the decoder's layers across the
        ranks of `group` in place (a ShardingError when they do not divide)."""

    def pipeline(self, group: mx.distributed.Group) -> None:
        """Pipeline parallelism, before the weights are loaded: keep this rank's run of decoder
        layers (the others' modules dropped) and hand the hidden states between ranks around them."""


def matrix_weights(name: str, shape: tuple[int, ...], quantize_vision: bool) -> bool:
    """The default `Family.quantizable`: every 2-D weight, a Linear's or an Embedding's (norms are
    1-D, convolutions 4-D or 5-D); the vision tower's (`vision_tower.`, as models/vlm.Model and
    mlx-vlm name it) only with `quantize_vision`."""
    return len(shape) == 2 and (quantize_vision or not name.startswith("vision_tower."))


@dataclass(frozen=True)
class Family:
    name: str  # the registry key, e.g. "qwen2_5_vl"
    description: str  # for people: "Holo1.5 / Qwen2.5-VL"
    model_types: tuple[str, ...]  # config.json model_type values it reads
    architectures: tuple[str, ...]  # config.json architectures it reads
    config: Callable[[dict], Any]  # config.json -> the family's config dataclass (ConfigError if unusable)
    model: Callable[[Any], VisionLanguageModel]  # config -> modules whose attribute names are checkpoint keys
    sanitize: Callable[[dict], dict]  # checkpoint tensors -> tensors under the modules' names
    mlx_config: Callable[[dict, Any], dict]  # (config.json, config) -> the config.json a converted folder gets
    image_processor: Callable[[Path], Any]  # model folder -> holo_mlx.image.ImageProcessorConfig
    image_placeholder: str  # what its chat template writes for one image (the image token expands in it)
    localization_prompt: Callable[[str], str]  # target description -> the instruction it was trained on
    # (width, height) of the image as the model saw it -> the answer's JSON schema: an object whose
    # integer "x" and "y" are a position in those pixels (what /v1/localize reads).
    localization_schema: Callable[[int, int], dict]
    tool_format: ToolFormat = HERMES  # how its checkpoints write tool calls
    coordinates: CoordinateSpace = RESIZED_PIXELS  # where its answers' x and y are (coordinates.py)
    harness: Harness = SurferH  # how computer-use tools ask it for one step (agent.py)
    # Image limits when the server is given none (--max-side, --max-pixels): None is the
    # checkpoint's own ceiling. Holo1.5's cookbook caps screenshots; Holo2's uses its processor's.
    max_side: int | None = MAX_SIDE
    max_pixels: int | None = MAX_PIXELS
    # (sanitized name of a `.weight`, its shape, --quantize-vision) -> whether `python -m convert -q`
    # may quantize it; convert still keeps in float what the group size does not divide.
    quantizable: Callable[[str, tuple[int, ...], bool], bool] = matrix_weights
    # Sanitized name suffixes `python -m convert` writes in float32 whatever --dtype: what the published
    # checkpoints keep in float32 because rounding it compounds over every token.
    float32_weights: tuple[str, ...] = ()
    # Checkpoint key prefixes of heads the runtime does not run (a multi-token-prediction draft head):
    # sanitize drops them, convert keeps them, as published but for the dtype, in a shard of their own.
    unrun_prefixes: tuple[str, ...] = ()
