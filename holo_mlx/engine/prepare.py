"""One preparation for every path that runs a prompt: generation, embeddings, the CLI.

A prompt's token ids and images become what decoder passes need: rotary positions and the delta
that continues them while decoding (the family's rule), the prefix-cache key, and token
embeddings by slice with each image's features in place. An image is encoded when the first
slice reaching it is asked for (through the vision cache when one is given) and dropped once the
slices have passed it, so a long prompt never holds every image's features at once.
"""

import mlx.core as mx
import numpy as np

from ..models import VisionLanguageModel
from ..models.base import Span
from .caches import VisionCache, prefix_key

_NO_CACHE = VisionCache(0)


class PreparedPrompt:
    def __init__(self, model: VisionLanguageModel, prompt, vision_cache: VisionCache | None = None):
        self.model, self.prompt = model, prompt
        self.vision_cache = vision_cache or _NO_CACHE
        ids = prompt.input_ids
        self.length = len(ids)
        self.positions, self.delta = model.positions(ids, [image.grid_thw for image in prompt.images])
        image_token = model.config.image_token_id
        self.key = prefix_key(ids, prompt.images, image_token)
        is_image = np.concatenate([[0], np.asarray(ids) == image_token, [0]]).astype(np.int8)
        edges = np.flatnonzero(np.diff(is_image))
        self.image_spans = list(zip(edges[::2].tolist(), edges[1::2].tolist()))  # [start, end) per image
        # Inside the prompt, where each image and each message ends: where the scheduler snapshots
        # layers that cannot be trimmed, so that a later prompt sharing this far resumes there.
        ends = {end for _, end in self.image_spans} | set(prompt.message_ends)
        self.boundaries = sorted(end for end in ends if 0 < end < self.length)
        self._features: dict[int, mx.array] = {}

    def reusable(self, length: int) -> int:
        """A cached prefix length backed off to an image boundary (images are encoded whole), and
        short of the whole prompt: the last prompt token must run to give the first logits."""
        length = min(length, self.length - 1)
        for start, end in self.image_spans:
            if start < length < end:
                return start
        return length

    def next_position(self, generated: int) -> int:
        """Position (on every axis) of the token fed back after `generated` sampled tokens."""
        return self.length + self.delta + generated - 1

    def span(self, start: int, end: int, cache: list) -> Span:
        """input_ids[start:end] as a decoder span continuing `cache`: embeddings and positions."""
        embeds, deepstack = self.embeds(start, end)
        return Span(embeds, mx.array(self.positions[:, None, start:end]), cache, deepstack=deepstack)

    def embeds(self, start: int, end: int) -> tuple[mx.array, mx.array | None]:
        """Token embeddings (1, end - start, hidden) of input_ids[start:end], image features in place,
        and their DeepStack input (see VisionLanguageModel.embed)."""
        pieces = []
        for number, (first, last) in enumerate(self.image_spans):
            if first < end and last > start:
                if number not in self._features:
                    self._features[number] = self.vision_cache.features(self.prompt.images[number], self._encode)
                pieces.append(self._features[number][max(start, first) - first:min(end, last) - first])
            if last <= end:
                self._features.pop(number, None)
        return self.model.embed(self.prompt.input_ids[start:end], mx.concatenate(pieces) if pieces else None)

    def _encode(self, image) -> mx.array:
        return self.model.encode_images([image.pixel_values], [image.grid_thw])
