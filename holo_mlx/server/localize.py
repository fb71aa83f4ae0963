"""POST /v1/localize (extension): screenshot + target -> click position, as the model answered it and in
the original image.

The model family's own localization prompt, with thinking off, decoded under its schema that keeps x and
y on the image in the family's coordinate space (Holo1.5: pixels of the resized image; Holo2: 0-1000),
so the answer is always a position on the screenshot.
"""

import asyncio
import json

from fastapi import APIRouter, Request

from ..coordinates import map_point
from .content import ImageReader, to_part
from .errors import APIError
from .inputs import build_prompt, reject_lone_surrogates
from .openapi import API_ERRORS, responses
from .protocol import (HoloImage, HoloImagePart, ImageSize, ImageURL, ImageURLPart, Localization, LocalizeRequest,
                       OriginalClick, SamplingFields, dump)
from .sampling_fields import sampling_params
from .served import ready_model
from .streaming import collect

router = APIRouter()

# {"action": "click_absolute", "x": 1315, "y": 727} is about 20 tokens; the grammar ends it sooner.
MAX_TOKENS = 64
# Hcompany localizes with Holo2 thinking off: the answer is the JSON at once. Templates without the
# switch (Holo1.5's) ignore it.
TEMPLATE_KWARGS = {"enable_thinking": False}


@router.post("/v1/localize", responses=responses(Localization, *API_ERRORS))
async def localize(body: LocalizeRequest, request: Request):
    state = request.app.state
    reject_lone_surrogates(body)
    served = ready_model(request, body.model)
    engine = served.engine
    family = engine.model.family
    if not body.target.strip():
        raise APIError(400, "target must not be empty", param="target")

    def build():
        screenshot = to_part(screenshot_part(body.image), state.image_policy, "image", ImageReader(engine.prompts))
        return engine.prompts.build([{"role": "user", "content": [
            screenshot, {"type": "text", "text": family.localization_prompt(body.target)}]}],
            template_kwargs=TEMPLATE_KWARGS)

    prompt = await build_prompt(build, "image")
    image = prompt.images[0]
    width, height = image.resized_size
    grammar = await asyncio.to_thread(served.grammars.json_schema, family.localization_schema(width, height))
    params = sampling_params(SamplingFields(temperature=0), max_tokens=MAX_TOKENS, prompt_tokens=len(prompt.input_ids),
                             context=engine.max_model_len, logprobs=None, prompt_param="image",
                             default_max_tokens=MAX_TOKENS, grammar=grammar)
    chunks = await collect(request, served.generate(prompt, params))
    click = json.loads("".join(chunk.text for chunk in chunks))  # complete: the grammar ends well within MAX_TOKENS
    original_x, original_y = map_point(click["x"], click["y"], image.resized_size, image.original_size,
                                       family.coordinates)
    return dump(Localization(
        x=click["x"], y=click["y"], resized=ImageSize(width=width, height=height),
        original=OriginalClick(x=original_x, y=original_y, width=image.original_size[0],
                               height=image.original_size[1]),
        model=state.config.model_name))


def screenshot_part(image: str):
    """The `image` field as a content part: a URL (data URLs always; others as the server allows) or bare base64."""
    if image.startswith(("data:", "http://", "https://", "file://")):
        return ImageURLPart(type="image_url", image_url=ImageURL(url=image))
    return HoloImagePart(type="image", image=HoloImage(b64=image))
