"""POST /v1/embeddings: mean-pooled final hidden states of the served model (see holo_mlx/engine/embedding.py).

Text is tokenized as is (no chat template, no special tokens). A list of content parts is one
multimodal input: its text and images in order, each image as <|vision_start|>, its visual tokens
and <|vision_end|>; every one of those tokens is pooled. Each input must fit the context, and
all of a request's inputs together at most --max-embedding-tokens.
"""

import base64

import numpy as np
from fastapi import APIRouter, Request, Response

from .content import ImageReader
from .errors import APIError
from .inputs import input_params, input_prompts, reject_lone_surrogates
from .openapi import API_ERRORS, responses
from .protocol import Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage, dump
from .served import ready_model

router = APIRouter()


@router.post("/v1/embeddings", responses=responses(EmbeddingList, *API_ERRORS))
async def embeddings(body: EmbeddingRequest, request: Request):
    state = request.app.state
    config = state.config
    reject_lone_surrogates(body)
    engine = ready_model(request, body.model).engine
    hidden_size = engine.model.config.text_config.hidden_size
    if body.dimensions is not None and not 1 <= body.dimensions <= hidden_size:
        raise APIError(400, f"dimensions must be in [1, {hidden_size}]", param="dimensions")
    prompts = await input_prompts(engine, body.input, state.image_policy, "input", ImageReader(engine.prompts))
    for prompt, param in zip(prompts, input_params(body.input, "input")):
        if len(prompt.input_ids) > engine.max_model_len:
            raise APIError(400, f"{param} has {len(prompt.input_ids)} tokens; this model's context is "
                           f"{engine.max_model_len} tokens", param=param, code="context_length_exceeded")
    tokens = sum(len(prompt.input_ids) for prompt in prompts)
    if tokens > config.max_embedding_tokens:
        raise APIError(400, f"the inputs have {tokens} tokens in all; at most {config.max_embedding_tokens} are "
                       "allowed per request (--max-embedding-tokens): split them over several requests",
                       param="input", code="max_tokens_per_request")

    vectors = await engine.embed(prompts, client_gone=request.is_disconnected)
    if vectors is None:
        return Response(status_code=499)  # nobody reads it; nginx's "client closed request" in the counts
    if body.dimensions is not None:
        vectors = vectors[:, : body.dimensions]
        vectors = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
    data = [
        Embedding(index=index, embedding=base64.b64encode(vector.astype("<f4").tobytes()).decode()
                  if body.encoding_format == "base64" else vector.tolist())
        for index, vector in enumerate(vectors)
    ]
    return dump(EmbeddingList(data=data, model=config.model_name,
                              usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)))
