"""Computer use on the Responses API: a `computer_use_preview` (or GA `computer`) tool answered with
`computer_call` items that a local Holo model produces.

Each turn the model is asked in its family's harness (agent.py: Surfer-H's for Holo1.5 and Holo2,
the task, the actions so far and the latest screenshot; Hcompany's agent loop for Holo3 on, the
conversation with its 3 latest screenshots) and answers one step under constrained decoding, so
the step always parses. The action becomes computer calls in the display's pixels:
Holo answers in its family's coordinate space (Holo1.5: pixels of the screenshot as resized for
it; Holo2: 0-1000 on each axis), which is mapped onto the display (`display_width` x
`display_height`; the screenshot's own size for the GA tool, which sends none). On a HiDPI screen
the screenshot has more pixels than the display, and clicks go in display pixels.

Holo's action -> computer calls (docs/API.md has the table):
    click_element(x, y)           -> click(x, y, button "left")
    write_element(x, y, content)  -> click(x, y), then type(content)
    scroll(direction)             -> scroll at the display's centre by half a display
    go_back / refresh             -> keypress (Alt+Left / F5; Cmd+[ / Cmd+R on a mac)
    wait                          -> wait
    answer(content)               -> an assistant message: the loop ends
A conversation without a screenshot yet is answered with a screenshot call, without running the model.
"""

import json
from functools import cache

from ..agent import Harness, NavigationAction, bounded_schema
from ..coordinates import CoordinateSpace, map_point
from .errors import APIError
from .protocol import ComputerCallItem, ResponsesRequest, new_id

ITEM_TYPES = ("computer_call", "computer_call_output")
TOOL_TYPES = ("computer_use_preview", "computer")
MAX_CHARS = 200  # longest thought, notes or typed text: a step's length stays bounded
# The step's schema is written before its screenshot is resized: pixel positions are bounded as on
# a screenshot this large (four digits), which still ends decoding.
LARGEST_SCREEN = (10_000, 10_000)
DEFAULT_MAX_TOKENS = 1024


class Screen:
    """The computer tool of a request: its display size (None: the screenshot's) and environment
    (Anthropic's computer tool, server/anthropic_chat.py, gives a size and no environment)."""

    def __init__(self, size: tuple[int, int] | None, environment: str = "browser"):
        self.size, self.environment = size, environment

    @classmethod
    def of_tool(cls, tool: dict, param: str) -> "Screen":
        """The screen of an OpenAI computer tool."""
        size = None
        if tool["type"] == "computer_use_preview":
            width, height = tool.get("display_width"), tool.get("display_height")
            if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
                raise APIError(400, "computer_use_preview needs positive integer display_width and display_height",
                               param=param)
            size = (width, height)
        return cls(size, tool.get("environment", "browser"))

    def keys(self, action: str) -> list[str]:
        mac = self.environment == "mac"
        return {"go_back": ["CMD", "["] if mac else ["ALT", "LEFT"], "refresh": ["CMD", "R"] if mac else ["F5"]}[action]


def tool_of(tools: list[dict] | None) -> tuple[Screen | None, list[dict] | None]:
    """(the computer tool, if any; the other tools)."""
    screens = [(index, tool) for index, tool in enumerate(tools or []) if tool.get("type") in TOOL_TYPES]
    if not screens:
        return None, tools
    if len(screens) > 1:
        raise APIError(400, "give one computer tool", param=f"tools.{screens[1][0]}")
    index, tool = screens[0]
    return Screen.of_tool(tool, f"tools.{index}"), [t for t in tools if t is not tool]


def chat_messages(item: dict, param: str) -> list[dict]:
    """A computer call (an earlier action, as text) or its output (the screenshot) as chat messages."""
    if item["type"] == "computer_call":
        return [{"role": "assistant", "content": json.dumps(item.get("action"))}]
    output = item.get("output") or {}
    if output.get("type") not in ("computer_screenshot", "input_image") or not isinstance(output.get("image_url"), str):
        raise APIError(400, f"{param}.output must be a computer_screenshot with an image_url (a data URL)",
                       param=f"{param}.output")
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": output["image_url"]}}]}]


def screenshots(conversation: list[dict]) -> list[str]:
    return [part["image_url"]["url"] for message in conversation if isinstance(message["content"], list)
            for part in message["content"] if part.get("type") == "image_url"]


def computer_calls(action: NavigationAction, screen: Screen, resized: tuple[int, int], original: tuple[int, int],
                   coordinates: CoordinateSpace) -> tuple[list[dict], str | None]:
    """(computer actions, final answer) of a step's action, positions mapped from the family's space on
    the resized screenshot to the display."""
    display = screen.size or original
    if action.action in ("click_element", "write_element"):
        x, y = map_point(action.x, action.y, resized, display, coordinates)
        actions = [{"type": "click", "button": "left", "x": x, "y": y}]
        if action.action == "write_element":
            actions.append({"type": "type", "text": action.content})
        return actions, None
    if action.action == "scroll":
        horizontal = action.direction in ("left", "right")
        amount = (display[0] if horizontal else display[1]) // 2 * (-1 if action.direction in ("up", "left") else 1)
        return [{"type": "scroll", "x": display[0] // 2, "y": display[1] // 2,
                 "scroll_x": amount if horizontal else 0, "scroll_y": 0 if horizontal else amount}], None
    if action.action in ("go_back", "refresh"):
        return [{"type": "keypress", "keys": screen.keys(action.action)}], None
    if action.action == "wait":
        return [{"type": "wait"}], None
    return [], action.content  # answer


def call_item(action: dict) -> ComputerCallItem:
    return ComputerCallItem(id=new_id("cu"), call_id=new_id("call"), action=action)


def check(body: ResponsesRequest, tools: list[dict] | None) -> None:
    if tools:
        raise APIError(400, "a computer tool cannot be combined with function tools here", param="tools")
    if body.text and body.text.format and body.text.format.type != "text":
        raise APIError(400, "a computer tool answers with computer calls: leave text.format out", param="text.format")
    if body.max_tool_calls == 0:
        raise APIError(400, "a computer tool answers with computer calls: max_tool_calls must allow one",
                       param="max_tool_calls")
    if body.wants_logprobs:  # a step's message is a field of its JSON, not tokens as generated
        raise APIError(400, "a computer tool's answer has no logprobs", param="top_logprobs" if body.include is None
                       else "include")


def navigation_request(body: ResponsesRequest) -> ResponsesRequest:
    """The request's sampling settings for the navigation step (greedy unless it asks otherwise)."""
    return body.model_copy(update={"instructions": None, "stream": False,
                                   "max_output_tokens": body.max_output_tokens or DEFAULT_MAX_TOKENS,
                                   "temperature": 0.0 if body.temperature is None else body.temperature})


@cache
def step_schema(harness: Harness, coordinates: CoordinateSpace) -> dict:
    """A step's schema: strings bounded, x and y bounded and described in the family's coordinate space."""
    return bounded_schema(harness.step.model_json_schema(), max_chars=MAX_CHARS,
                          max_coordinate=max(coordinates.maximum(LARGEST_SCREEN)), coordinates=coordinates)


def step_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "computer_step", "schema": schema, "strict": True}}
