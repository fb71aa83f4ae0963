"""Request inputs into prompts: text checked for UTF-8, chat template kwargs checked, raw inputs split
and built, and the `holo` field that reports each image's resize."""

import asyncio
from collections.abc import Callable

from pydantic import BaseModel

from ..engine.worker import Engine
from ..prompt import RENDER_ARGUMENTS, Prompt
from .content import ImagePolicy, ImageReader, to_parts
from .errors import APIError
from .protocol import HoloInfo, ImageResize, ImageSize


def reject_lone_surrogates(value, param: str = "") -> None:
    """400 for text that cannot be UTF-8 (JSON's "\\ud800" escapes decode to lone surrogates): the
    tokenizer, the template and the response encoder would all fail on it."""
    if isinstance(value, BaseModel):
        value = value.model_dump(by_alias=True)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise APIError(400, f"{param or 'body'} contains a lone UTF-16 surrogate at character {error.start}; "
                           "send text as valid Unicode", param=param or None, code="invalid_text") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            reject_lone_surrogates(key, param)
            reject_lone_surrogates(item, f"{param}.{key}" if param else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            reject_lone_surrogates(item, f"{param}.{index}")


def template_kwargs(value, param: str = "chat_template_kwargs") -> dict:
    """A request's chat template variables: an object, none of them one the server sets itself."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        kind = {str: "a string", int: "a number", float: "a number", bool: "a boolean", list: "an array"}[type(value)]
        raise APIError(400, f"{param} must be an object of chat template variables, e.g. "
                       f'{{"enable_thinking": false}}, not {kind}', param=param)
    for key in value:
        if key in RENDER_ARGUMENTS:
            raise APIError(400, f"{param} may not set {key!r}: the server sets it (or it is no template "
                           "variable)", param=f"{param}.{key}")
    return value


def split_inputs(value) -> list:
    """One entry per input: a string, a token-id list or a content-part list."""
    if isinstance(value, str) or (value and all(isinstance(item, int) for item in value)):
        return [value]
    if value and not isinstance(value[0], (str, list)):  # a single list of content parts
        return [value]
    return list(value)


def input_params(value, param: str) -> list[str]:
    """Each input's name in errors: the field itself when it is one input, else `field.index`."""
    inputs = split_inputs(value)
    if len(inputs) == 1 and inputs[0] is value:
        return [param]
    return [f"{param}.{index}" for index in range(len(inputs))]


async def input_prompts(engine: Engine, value, policy: ImagePolicy, param: str, images: ImageReader) -> list[Prompt]:
    """Prompts for raw inputs (no chat template): text as is, token ids as given, content parts in
    order (their images read by `images`)."""
    inputs = split_inputs(value)
    if not inputs or any(len(item) == 0 for item in inputs):
        raise APIError(400, f"{param} must not be empty", param=param)
    vocab, image_token = engine.model.config.text_config.vocab_size, engine.model.config.image_token_id
    prompts = []
    for item, where in zip(inputs, input_params(value, param)):
        if isinstance(item, str):
            prompts.append(await build_prompt(lambda text=item: engine.prompts.build_text(text), where))
        elif isinstance(item[0], int):
            if any(not 0 <= token < vocab for token in item):
                raise APIError(400, f"token ids must be in [0, {vocab})", param=where)
            if image_token in item:
                raise APIError(400, f"token id {image_token} (<|image_pad|>) stands for image features: send the "
                               "image as a content part instead", param=where)
            prompts.append(Prompt(input_ids=list(item), images=[]))
        else:
            prompts.append(await build_prompt(
                lambda item=item, where=where: engine.prompts.build_parts(to_parts(item, policy, where, images)),
                where))
        if not prompts[-1].input_ids:  # e.g. only empty text parts: nothing to pool or to continue
            raise APIError(400, f"{where} has no tokens", param=where)
    return prompts


async def build_prompt(build: Callable[[], Prompt], param: str) -> Prompt:
    """Run prompt building (image fetching, decoding, resizing) off the event loop; bad input -> 400.
    Image errors are raised per content part (content.to_part), with the part's own param."""
    try:
        return await asyncio.to_thread(build)
    except ValueError as error:
        raise APIError(400, str(error), param=param) from None


def holo_info(prompt: Prompt) -> HoloInfo | None:
    if not prompt.images:
        return None
    return HoloInfo(images=[
        ImageResize(original=ImageSize(width=image.original_size[0], height=image.original_size[1]),
                    resized=ImageSize(width=image.resized_size[0], height=image.resized_size[1]))
        for image in prompt.images
    ])
