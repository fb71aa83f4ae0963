"""POST /v1/embeddings: mean-pooled final hidden states of the served model (see holo_mlx/embed.py).

Text is tokenized as is (no chat template, no special tokens). A list of content parts is one
multimodal input: its text and images in order, each image as <|vision_start|>, its visual tokens
and <|vision_end|>; every one of those tokens is pooled.
"""

import base64

import numpy as np
from fastapi import APIRouter, Request

from ..prompt import Prompt
from .common import build_prompt, check_model
from .content import to_parts
from .errors import APIError
from .protocol import Embedding, EmbeddingList, EmbeddingRequest, Usage, dump

router = APIRouter()


def embedding_inputs(value) -> list:
    """One entry per input: a string, a token-id list or a content-part list."""
    if isinstance(value, str) or (value and all(isinstance(item, int) for item in value)):
        return [value]
    if value and not isinstance(value[0], (str, list)):  # a single list of content parts
        return [value]
    return list(value)


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request):
    state = request.app.state
    engine = state.engine
    engine.require_ready()
    check_model(body.model, state.served_model_name)
    inputs = embedding_inputs(body.input)
    if not inputs or any(len(item) == 0 for item in inputs):
        raise APIError(400, "input must not be empty", param="input")
    hidden_size, vocab = engine.model.config.text_config.hidden_size, engine.model.config.text_config.vocab_size
    if body.dimensions is not None and not 1 <= body.dimensions <= hidden_size:
        raise APIError(400, f"dimensions must be in [1, {hidden_size}]", param="dimensions")

    prompts = []
    for index, item in enumerate(inputs):
        if isinstance(item, str):
            prompts.append(await build_prompt(lambda text=item: engine.prompts.build_text(text)))
        elif isinstance(item[0], int):
            if any(not 0 <= token < vocab for token in item):
                raise APIError(400, f"token ids must be in [0, {vocab})", param="input")
            prompts.append(Prompt(input_ids=list(item), images=[]))
        else:
            parts = to_parts(item, state.image_policy, f"input[{index}]")
            prompts.append(await build_prompt(lambda parts=parts: engine.prompts.build_parts(parts)))
    for index, prompt in enumerate(prompts):
        if len(prompt.input_ids) > engine.max_model_len:
            raise APIError(400, f"input[{index}] has {len(prompt.input_ids)} tokens; this model's context is "
                           f"{engine.max_model_len} tokens", param="input", code="context_length_exceeded")

    vectors = await engine.embed(prompts)
    if body.dimensions is not None:
        vectors = vectors[:, : body.dimensions]
        vectors = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
    data = [
        Embedding(index=index, embedding=base64.b64encode(vector.astype("<f4").tobytes()).decode()
                  if body.encoding_format == "base64" else vector.tolist())
        for index, vector in enumerate(vectors)
    ]
    tokens = sum(len(prompt.input_ids) for prompt in prompts)
    return dump(EmbeddingList(data=data, model=state.served_model_name,
                              usage=Usage(prompt_tokens=tokens, total_tokens=tokens)))
