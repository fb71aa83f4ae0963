"""Sentence and screenshot embeddings from the generative model itself.

Embedding = mean over the input's tokens of the decoder's final hidden states (after the final
RMSNorm), L2-normalized. Sequences are right-padded into one batch: with causal attention a real
token never attends to the padding after it, so no extra mask is needed.
"""

import mlx.core as mx
import numpy as np

from .model import Model
from .rope import rope_index

MAX_BATCH_TOKENS = 8192  # padded tokens per forward pass: bounds activation memory for long lists


def embed_prompts(model: Model, prompts: list) -> np.ndarray:
    """(len(prompts), hidden_size) float32 unit vectors, in input order."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].input_ids))  # similar lengths batch well
    result = np.zeros((len(prompts), model.config.text_config.hidden_size), dtype=np.float32)
    batch: list[int] = []
    for index in order + [None]:
        longest = len(prompts[index].input_ids) if index is not None else 0
        if batch and (index is None or longest * (len(batch) + 1) > MAX_BATCH_TOKENS):
            result[batch] = _embed_batch(model, [prompts[i] for i in batch])
            batch = []
        if index is not None:
            batch.append(index)
    return result


def _embed_batch(model: Model, prompts: list) -> np.ndarray:
    length = max(len(prompt.input_ids) for prompt in prompts)
    embeds, positions = [], np.zeros((3, len(prompts), length), dtype=np.int64)
    valid = np.zeros((len(prompts), length), dtype=np.float32)
    for row, prompt in enumerate(prompts):
        grids = [image.grid_thw for image in prompt.images]
        features = model.encode_images([image.pixel_values for image in prompt.images], grids) if grids else None
        sequence = model.embed(prompt.input_ids, features)[0]
        size = sequence.shape[0]
        embeds.append(mx.pad(sequence, [(0, length - size), (0, 0)]))
        positions[:, row, :size], _ = rope_index(
            prompt.input_ids, grids, image_token_id=model.config.image_token_id,
            spatial_merge_size=model.config.vision_config.spatial_merge_size)
        valid[row, :size] = 1.0
    hidden = model.language_model.model(mx.stack(embeds), mx.array(positions))
    weights = mx.array(valid)[..., None]
    pooled = (hidden.astype(mx.float32) * weights).sum(axis=1) / weights.sum(axis=1)
    pooled = pooled / mx.linalg.norm(pooled, axis=-1, keepdims=True)
    return np.array(pooled)
