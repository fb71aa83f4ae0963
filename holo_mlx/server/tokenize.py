"""POST /tokenize and /detokenize, in vLLM's shapes: a raw prompt or chat messages into token ids (chat
messages through the very prompt chat completions would build, images at the resolution it would
use), and token ids back into text."""

import asyncio

from fastapi import APIRouter, Request

from .chat import chat_prompt
from .errors import APIError
from .inputs import reject_lone_surrogates
from .openapi import API_ERRORS, responses
from .protocol import (ChatCompletionRequest, DetokenizeRequest, DetokenizeResponse, TokenizeRequest,
                       TokenizeResponse, dump)
from .served import ready_model

router = APIRouter()


@router.post("/tokenize", responses=responses(TokenizeResponse, *API_ERRORS))
async def tokenize(body: TokenizeRequest, request: Request):
    reject_lone_surrogates(body)
    served = ready_model(request, body.model)
    tokenizer = served.engine.prompts.tokenizer
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "send either prompt (text) or messages (a chat), not both or neither", param="prompt")
    if body.messages is not None:
        chat = ChatCompletionRequest(messages=body.messages, tools=body.tools,
                                     chat_template_kwargs=body.chat_template_kwargs,
                                     mm_processor_kwargs=body.mm_processor_kwargs)
        prompt, _, _ = await chat_prompt(chat, request, served, add_generation_prompt=body.add_generation_prompt)
        tokens = prompt.input_ids
    else:
        special = body.add_special_tokens is not False
        tokens = await asyncio.to_thread(tokenizer.encode, body.prompt, add_special_tokens=special)
    return dump(TokenizeResponse(count=len(tokens), max_model_len=served.engine.max_model_len, tokens=tokens,
                                 token_strs=tokenizer.convert_ids_to_tokens(tokens) if body.return_token_strs
                                 else None))


@router.post("/detokenize", responses=responses(DetokenizeResponse, *API_ERRORS))
async def detokenize(body: DetokenizeRequest, request: Request):
    tokenizer = ready_model(request, body.model).engine.prompts.tokenizer
    known = len(tokenizer)  # the vocabulary with its added tokens; the model's rows beyond it are padding
    if unknown := [token for token in body.tokens if not 0 <= token < known]:
        raise APIError(400, f"tokens must be ids in [0, {known}); got {unknown[0]}", param="tokens",
                       code="invalid_token")
    return dump(DetokenizeResponse(prompt=tokenizer.decode(body.tokens)))
