"""Chat messages -> token ids + preprocessed images, through the checkpoint's own chat template.

Messages use the internal format the server converts OpenAI payloads into:
    {"role": "system" | "user" | "assistant" | "tool",
     "content": str | [{"type": "text", "text": str}
                       | {"type": "image", "image": bytes | PIL.Image | ProcessedImage}],
     "tool_calls": [{"name": str, "arguments": str | dict}],  (assistant, optional: JSON text as
                                                           OpenAI sends it, or its object)
     "reasoning_content": str}  (assistant, optional: a thinking model's reasoning, which Qwen3's
                                 template writes back for the turns after the last user message)
As in transformers' processors, the chat template writes the family's placeholder for each image
part (Qwen2.5-VL: <|vision_start|><|image_pad|><|vision_end|>), and its image token is repeated
once per visual token.
"""

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .image import MAX_PIXELS, MAX_SIDE, ImageProcessorConfig, ProcessedImage, preprocess_image
from .reasoning import ThinkTokens
from .tool_format import HERMES, ToolFormat

# What build() passes the chat template itself, and apply_chat_template's own arguments: not
# template variables a request's template kwargs may set.
RENDER_ARGUMENTS = frozenset({"messages"} | set(inspect.signature(PreTrainedTokenizerBase.apply_chat_template)
                                                .parameters) - {"self", "kwargs"})


@dataclass
class Prompt:
    input_ids: list[int]
    images: list[ProcessedImage]  # in prompt order
    thinking: bool = False  # the chat template's generation prompt opened a think block: the model reasons first
    # Where each message's rendering ends, in input_ids (only when the builder marks them): where a
    # model whose caches cannot be trimmed keeps prefix-cache snapshots for the conversation's next turn.
    message_ends: list[int] = field(default_factory=list)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer; its chat template may live only in chat_template.jinja/.json."""
    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.chat_template is None:
        if (path / "chat_template.jinja").exists():
            tokenizer.chat_template = (path / "chat_template.jinja").read_text()
        elif (path / "chat_template.json").exists():
            tokenizer.chat_template = json.loads((path / "chat_template.json").read_text())["chat_template"]
    return tokenizer


class PromptBuilder:
    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_config: ImageProcessorConfig,
        *,
        image_token_id: int,
        image_placeholder: str,
        max_side: int | None = MAX_SIDE,
        max_pixels: int | None = MAX_PIXELS,
        tool_format: ToolFormat = HERMES,
        mark_message_ends: bool = False,
    ):
        self.tokenizer = tokenizer
        self.mark_message_ends = mark_message_ends
        self.tool_format = tool_format
        # Qwen2.5-VL's template has no tools; Qwen3's (Holo2) writes them itself.
        self.template_writes_tools = "tools" in (tokenizer.chat_template or "")
        self.image_config = image_config
        self.image_token_id = image_token_id
        self.image_placeholder = image_placeholder  # what the chat template writes for one image
        self.image_token = tokenizer.convert_ids_to_tokens(image_token_id)
        self.think_tokens = ThinkTokens.of(tokenizer)
        self.max_side = max_side
        self.max_pixels = max_pixels

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> "PromptBuilder":
        """The folder's tokenizer and its family's image processor settings, image token and
        placeholder; kwargs: max_side, max_pixels, mark_message_ends."""
        from .folders import read_config
        from .models import family_for

        raw = read_config(Path(path))
        family = family_for(raw)
        kwargs = {"max_side": family.max_side, "max_pixels": family.max_pixels, **kwargs}
        return cls(load_tokenizer(path), family.image_processor(Path(path)),
                   image_token_id=family.config(raw).image_token_id, image_placeholder=family.image_placeholder,
                   tool_format=family.tool_format, **kwargs)

    def build(self, messages: list[dict], *, tools: list[dict] | None = None,
              add_generation_prompt: bool = True, template_kwargs: dict | None = None) -> Prompt:
        """`tools` are OpenAI function tools; messages may hold assistant "tool_calls" ({"name",
        "arguments"}) and role "tool" results, written by the template when it knows tools, else by
        the family's tool format. `template_kwargs` are more variables for the chat template (Qwen3's
        `enable_thinking`), none of RENDER_ARGUMENTS."""
        native = self.template_writes_tools
        if not native:
            messages = self.tool_format.render(messages, tools)
        template_messages, images = [], []
        for message in messages:
            content = message["content"]
            if not isinstance(content, str):
                content = [self._template_part(part, images) for part in content]
            entry = {"role": message["role"], "content": content}
            if message.get("tool_calls"):
                entry["tool_calls"] = [{"type": "function", "function": {
                    "name": call["name"], "arguments": self.tool_format.template_arguments(call["arguments"])}}
                    for call in message["tool_calls"]]
            if message.get("reasoning_content"):
                entry["reasoning_content"] = message["reasoning_content"]
            template_messages.append(entry)

        def render(history: list[dict], generation_prompt: bool) -> str:
            return self.tokenizer.apply_chat_template(
                history, tools=tools if native else None, tokenize=False,
                add_generation_prompt=generation_prompt, **(template_kwargs or {}),
            )

        text = render(template_messages, add_generation_prompt)
        message_ends = []
        if self.mark_message_ends and self.tokenizer.is_fast:
            encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids = encoded["input_ids"]
            message_ends = self._message_ends(text, encoded["offset_mapping"], render, template_messages)
        else:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
        thinking = add_generation_prompt and self.think_tokens is not None \
            and self.think_tokens.opened_by(ids, self.tokenizer.decode)
        return self._expand(ids, images, thinking, message_ends)

    @staticmethod
    def _message_ends(text: str, offsets: list[tuple[int, int]], render, messages: list[dict]) -> list[int]:
        """Token counts at which the first 1, 2, ... messages end in the prompt's `text`, where the
        rendering of those messages alone is a prefix of `text` ending on a token boundary.

        A template may refuse them alone (Qwen3.5's, with no user turn yet) or write them otherwise
        when they end the conversation (Qwen3.5 gives a last assistant turn an empty think block):
        then the count is where a user turn after them starts its content, which a later prompt
        with the same first messages shares too (a system prompt; an agent's earlier steps)."""
        token_ends = {end: index + 1 for index, (_, end) in enumerate(offsets)}
        ends = []
        for number in range(1, len(messages) + 1):
            for head in _rendered_heads(render, messages[:number]):
                if text.startswith(head) and len(head) in token_ends:
                    ends.append(token_ends[len(head)])
                    break
        return ends

    def build_text(self, text: str) -> Prompt:
        """Raw text, no chat template and no added special tokens (completions, embeddings)."""
        return self._expand(self.tokenizer.encode(text, add_special_tokens=False), [])

    def build_parts(self, parts: list[dict]) -> Prompt:
        """Text and image parts in order, no chat template: each image becomes
        the family's placeholder with its image tokens (screenshot embeddings)."""
        images: list[ProcessedImage] = []
        text = ""
        for part in parts:
            rendered = self._template_part(part, images)
            text += rendered["text"] if rendered["type"] == "text" else self.image_placeholder
        return self._expand(self.tokenizer.encode(text, add_special_tokens=False), images)

    @property
    def pixel_bounds(self) -> tuple[int, int]:
        """(the checkpoint's pixel floor, the pixel budget in force): what a request may ask within."""
        ceiling = self.image_config.max_pixels
        return self.image_config.min_pixels, min(self.max_pixels or ceiling, ceiling)

    def process_image(self, image: "bytes | Image.Image", *, min_pixels: int | None = None,
                      max_pixels: int | None = None) -> ProcessedImage:
        """Decode and resize one image with this checkpoint's settings (a request's own pixel budget,
        within pixel_bounds, when given); ImageError when it cannot."""
        return preprocess_image(image, self.image_config, max_side=self.max_side,
                                max_pixels=self.max_pixels if max_pixels is None else max_pixels,
                                min_pixels=min_pixels)

    def _template_part(self, part: dict, images: list[ProcessedImage]) -> dict:
        """The part as the chat template expects it; images are preprocessed and collected in order."""
        if part.get("type") == "text":
            return {"type": "text", "text": part["text"]}
        if part.get("type") == "image":
            image = part["image"]
            images.append(image if isinstance(image, ProcessedImage) else self.process_image(image))
            return {"type": "image"}
        raise ValueError(f"unsupported content part type {part.get('type')!r}; expected 'text' or 'image'")

    def _expand(self, ids: list[int], images: list[ProcessedImage], thinking: bool = False,
                message_ends: list[int] = ()) -> Prompt:
        """Repeat the i-th image token once per visual token of the i-th image (and move the message
        ends, token counts in `ids`, to where they fall after that)."""
        placeholders = ids.count(self.image_token_id)
        if placeholders != len(images):
            raise ValueError(
                f"prompt has {placeholders} {self.image_token} placeholders for {len(images)} images "
                "(the text itself may contain the literal token)"
            )
        remaining = iter(images)
        expanded: list[int] = []
        moved = {}  # token count in ids -> token count in the expanded ids
        for count, token in enumerate(ids):
            moved[count] = len(expanded)
            if token == self.image_token_id:
                expanded.extend([token] * next(remaining).num_tokens)
            else:
                expanded.append(token)
        moved[len(ids)] = len(expanded)
        return Prompt(input_ids=expanded, images=images, thinking=thinking,
                      message_ends=[moved[end] for end in message_ends])


# A user turn's text, to find where the template starts a user turn's content after some messages.
PROBE = "holo-mlx: where a user turn's content starts"


def _rendered_heads(render, history: list[dict]) -> list[str]:
    """What a conversation starting with `history` may begin with: its rendering alone, and its
    rendering up to the content of a user turn after it."""
    heads = []
    for messages, cut in ((history, None), (history + [{"role": "user", "content": PROBE}], PROBE)):
        try:
            rendered = render(messages, False)
        except Exception:  # a template may refuse a history that ends early (no user turn yet)
            continue
        if cut is None:
            heads.append(rendered)
        elif cut in rendered:
            heads.append(rendered[:rendered.rindex(cut)])
    return heads
