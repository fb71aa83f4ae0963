"""OpenAI message content -> the runtime's message format, with image bytes fetched safely.

Images arrive as data URLs, the original Holo API's `{"type": "image", "image": {"b64": ...}}`,
or (only when the operator allows it) http(s) URLs and local paths: fetching arbitrary URLs by
default would let any client make the server issue requests (server-side request forgery).
"""

import base64
import binascii
import logging
import stat
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from pydantic import TypeAdapter, ValidationError

from ..image import ImageError, ImageTooLarge, ProcessedImage
from ..prompt import PromptBuilder
from .errors import APIError
from .protocol import (CONTENT_PART_FORMS, ChatMessage, ContentPart, HoloImagePart, ImageURLPart, PixelBudget,
                       TextPart)

CONTENT_PART = TypeAdapter(ContentPart)

log = logging.getLogger("holo_mlx.server")


@dataclass(frozen=True)
class ImagePolicy:
    max_bytes: int
    allow_remote: bool = False
    allow_local: bool = False
    fetch_timeout_s: float = 10.0


class Resolution(NamedTuple):
    """The pixel budget an image is resized within; None: the server's."""

    min_pixels: int | None = None
    max_pixels: int | None = None


def resolution(budget: PixelBudget | None, bounds: tuple[int, int], param: str,
               base: Resolution = Resolution()) -> Resolution:
    """`budget`'s min_pixels / max_pixels over `base`, each within the server's (floor, ceiling);
    400 naming the field (`param.max_pixels`) otherwise."""
    floor, ceiling = bounds
    chosen = base._asdict()
    for key in chosen:
        value = getattr(budget, key, None)
        if value is None:
            continue
        if not floor <= value <= ceiling:
            raise APIError(400, f"{key} must be within this server's pixel bounds [{floor}, {ceiling}], got {value}",
                           param=f"{param}.{key}")
        chosen[key] = value
    chosen = Resolution(**chosen)
    if None not in chosen and chosen.min_pixels > chosen.max_pixels:
        named = "min_pixels" if getattr(budget, "min_pixels", None) is not None else "max_pixels"
        raise APIError(400, f"min_pixels ({chosen.min_pixels}) must not exceed max_pixels ({chosen.max_pixels})",
                       param=f"{param}.{named}")
    return chosen


@dataclass
class ImageReader:
    """Decodes and resizes a request's images with the model's prompt builder, each at its part's
    resolution, else the request's (mm_processor_kwargs), else the server's. `decoded` keeps them by
    bytes and resolution, for a request built more than once (truncation drops messages and builds again)."""

    prompts: PromptBuilder
    resolution: Resolution = Resolution()
    decoded: dict | None = None

    @classmethod
    def of(cls, prompts: PromptBuilder, budget: PixelBudget | None, decoded: dict | None = None) -> "ImageReader":
        """The reader of a request whose `mm_processor_kwargs` is `budget` (checked here)."""
        return cls(prompts, resolution(budget, prompts.pixel_bounds, "mm_processor_kwargs"), decoded)

    def read(self, raw: bytes, part: PixelBudget, param: str) -> ProcessedImage:
        chosen = resolution(part, self.prompts.pixel_bounds, param, self.resolution)
        if self.decoded is None:
            return self.prompts.process_image(raw, **chosen._asdict())
        if (raw, chosen) not in self.decoded:
            self.decoded[raw, chosen] = self.prompts.process_image(raw, **chosen._asdict())
        return self.decoded[raw, chosen]


def decode_base64(data: str, param: str) -> bytes:
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "image data is not valid base64", param=param, code="invalid_image") from None


def image_bytes(url: str, policy: ImagePolicy, param: str) -> bytes:
    if url.startswith("data:"):
        header, comma, data = url.partition(",")
        if not comma or ";base64" not in header:
            raise APIError(400, "image data URLs must be base64 (data:image/png;base64,...)", param=param,
                           code="invalid_image")
        raw = decode_base64(data, param)
    elif url.startswith(("http://", "https://")):
        if not policy.allow_remote:
            raise APIError(400, "remote image URLs are disabled on this server (start it with "
                           "--allow-remote-images); send the image as a base64 data URL", param=param,
                           code="remote_images_disabled")
        try:
            with urllib.request.urlopen(url, timeout=policy.fetch_timeout_s) as response:
                raw = response.read(policy.max_bytes + 1)
        except (OSError, ValueError) as error:
            # The reason (refused, timed out, no such host) would let a client map the server's network.
            log.info("could not fetch image %s: %s", url, error)
            raise APIError(400, "could not fetch the image URL", param=param, code="invalid_image") from None
    else:
        if not policy.allow_local:
            raise APIError(400, "local image paths are disabled on this server (start it with "
                           "--allow-local-images); send the image as a base64 data URL", param=param,
                           code="local_images_disabled")
        raw = read_local_image(Path(url.removeprefix("file://")), policy.max_bytes, param)
    if len(raw) > policy.max_bytes:
        raise APIError(413, f"image larger than {policy.max_bytes:,} bytes", param=param, code="image_too_large")
    return raw


def read_local_image(path: Path, max_bytes: int, param: str) -> bytes:
    """The file's bytes, its size checked before reading; one message whether it is missing, unreadable or
    not a file, so the answer says no more about the file system than that."""
    try:
        info = path.stat()  # before opening: a FIFO or a device would block or never end
        if not stat.S_ISREG(info.st_mode):
            raise IsADirectoryError(f"not a regular file: {path}")
        if info.st_size > max_bytes:
            raise APIError(413, f"image larger than {max_bytes:,} bytes", param=param, code="image_too_large")
        with path.open("rb") as file:
            return file.read(max_bytes + 1)
    except OSError as error:
        log.info("could not read image file %s: %s", path, error)
        raise APIError(400, "could not read the image file", param=param, code="invalid_image") from None


def to_part(part: ContentPart, policy: ImagePolicy, param: str, images: ImageReader) -> dict:
    """One content part in the runtime's format; images are fetched and prepared (decoded, resized)
    here, so a bad one is reported by its own place in the request."""
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, ImageURLPart):
        raw = image_bytes(part.image_url.url, policy, param)
    elif isinstance(part, HoloImagePart):
        raw = decode_base64(part.image.b64, param)
        if len(raw) > policy.max_bytes:
            raise APIError(413, f"image larger than {policy.max_bytes:,} bytes", param=param, code="image_too_large")
    else:
        raise APIError(400, f"unsupported content part type {part.type!r}", param=param)
    try:
        return {"type": "image", "image": images.read(raw, part, param)}
    except ImageTooLarge as error:
        raise APIError(413, str(error), param=param, code="image_too_large") from None
    except ImageError as error:
        raise APIError(400, f"invalid image: {error}", param=param, code="invalid_image") from None


def to_parts(parts: list, policy: ImagePolicy, param: str, images: ImageReader) -> list[dict]:
    return [to_part(checked_part(part, f"{param}.{index}"), policy, f"{param}.{index}", images)
            for index, part in enumerate(parts)]


def checked_part(part, param: str) -> ContentPart:
    """A content part as one of its accepted forms; 400 naming the part otherwise."""
    if not isinstance(part, dict):
        return part  # already validated (embeddings' typed input)
    try:
        return CONTENT_PART.validate_python(part)
    except ValidationError:
        raise APIError(400, f"{param} is not a content part this server reads; expected {CONTENT_PART_FORMS}",
                       param=param, code="invalid_content_part") from None


def to_messages(messages: list[ChatMessage], policy: ImagePolicy, images: ImageReader) -> list[dict]:
    """Messages in the runtime's format: assistant tool calls as {"name", "arguments"} and tool
    results as role "tool" (the prompt builder writes them in the family's convention)."""
    if not messages:
        raise APIError(400, "messages must not be empty", param="messages")
    converted = []
    for index, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        content = message.content
        if content is None:
            content = ""
        elif not isinstance(content, str):
            content = to_parts(content, policy, f"messages.{index}.content", images)
        entry = {"role": role, "content": content}
        if message.tool_calls:
            if role != "assistant":
                raise APIError(400, "only assistant messages carry tool_calls", param=f"messages.{index}.tool_calls")
            entry["tool_calls"] = [{"id": call.id, "name": call.function.name, "arguments": call.function.arguments}
                                   for call in message.tool_calls]
        converted.append(entry)
    return converted
