"""Holo's action spaces as pydantic models, and its localization prompts.

Pass a model's JSON schema as the response schema (`response_format`), and the server's
constrained decoding makes the answer parse into that model:

    response_format={"type": "json_schema",
                     "json_schema": {"name": "navigation_step", "schema": NavigationStep.model_json_schema()}}

Localization follows the Holo1.5 model card (`ClickAbsoluteAction`, pixels of the resized
screenshot) and, for Holo2, Hcompany's element-localization guide (`VisualLocalizerOutput`, 0-1000
on each axis); Hcompany asks Holo3 and Holo3.1 with the same instruction and schema
(hub.hcompany.ai/element-localization). Navigation follows Surfer-H, Hcompany's web agent built on the
Holo models: one step is a thought, notes, and one action; element actions carry the element's
description and its click position. Holo3 and later are trained on Hcompany's agent loop
(hub.hcompany.ai/agent-loop): a step is a note, a thought and one flat tool call (`AgentStep`), and
`evict_screenshots` keeps its conversation within its image budget. A family's `harness` (SurferH or
AgentLoop) is how the server's computer-use tools ask it for a step.
"""

import json
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from .coordinates import NORMALIZED_1000, RESIZED_PIXELS, CoordinateSpace
from .tool_format import as_parts

PIXEL_X, PIXEL_Y = RESIZED_PIXELS.axis_descriptions
NORMALIZED_X, NORMALIZED_Y = NORMALIZED_1000.axis_descriptions

# --- localization ----------------------------------------------------------------------------------


class ClickAbsoluteAction(BaseModel):
    """Click at absolute coordinates."""

    action: Literal["click_absolute"] = "click_absolute"
    x: int = Field(description=PIXEL_X)
    y: int = Field(description=PIXEL_Y)


class VisualLocalizerOutput(BaseModel):
    # No docstring: it would enter the schema the prompt shows, which is Hcompany's as published.
    x: int = Field(ge=0, le=NORMALIZED_1000.scale, description=NORMALIZED_X)
    y: int = Field(ge=0, le=NORMALIZED_1000.scale, description=NORMALIZED_Y)


def _localization_instruction(answer: type[BaseModel], target: str) -> str:
    # Holo1.5's model card and Hcompany's Holo2 guide share these words and differ in the schema shown.
    return ("Localize an element on the GUI image according to the provided target and output a click position.\n"
            f" * You must output a valid JSON following the format: {answer.model_json_schema()}\n"
            f" Your target is:\n{target}")


def _decoding_schema(answer: type[BaseModel], coordinates: CoordinateSpace, width: int, height: int) -> dict:
    """The answer's schema with every field required, nothing else allowed and x, y on a width x height
    image in its coordinate space.

    The prompt shows the published schema; decoding enforces this stricter one, so even a model
    that would answer off-screen gives a position on the image.
    """
    schema = answer.model_json_schema()
    schema["required"] = list(schema["properties"])
    schema["additionalProperties"] = False
    for axis, maximum in zip(("x", "y"), coordinates.maximum((width, height))):
        schema["properties"][axis].update(minimum=0, maximum=maximum)
    return schema


def localization_prompt(target: str) -> str:
    """The Holo1.5 model card's instruction, word for word: the model was trained on it."""
    return _localization_instruction(ClickAbsoluteAction, target)


def localization_schema(width: int, height: int) -> dict:
    """ClickAbsoluteAction with x, y in the pixels of the width x height image Holo1.5 saw."""
    return _decoding_schema(ClickAbsoluteAction, RESIZED_PIXELS, width, height)


def holo2_localization_prompt(target: str) -> str:
    """Hcompany's Holo2 element-localization instruction, word for word (sent with thinking off)."""
    return _localization_instruction(VisualLocalizerOutput, target)


def holo2_localization_schema(width: int, height: int) -> dict:
    """VisualLocalizerOutput: x, y in 0-1000 whatever the image's size (same signature as localization_schema)."""
    return _decoding_schema(VisualLocalizerOutput, NORMALIZED_1000, width, height)


# --- navigation ------------------------------------------------------------------------------------


class Action(BaseModel):
    # Every field required in the schema (defaults included) and nothing else allowed: constrained
    # decoding then writes complete actions.
    model_config = ConfigDict(extra="forbid", json_schema_mode_override="serialization",
                              json_schema_serialization_defaults_required=True)


class ClickElementAction(Action):
    """Click at the coordinates of a web element identified by its description."""

    action: Literal["click_element"] = "click_element"
    element: str = Field(description="Text description of the element.")
    x: int = Field(description=PIXEL_X)
    y: int = Field(description=PIXEL_Y)


class WriteElementAction(Action):
    """Write content at the coordinates of a web element identified by its description. Don't press Enter."""

    action: Literal["write_element"] = "write_element"
    content: str = Field(description="Content to write.")
    element: str = Field(description="Text description of the element and the text it contains.")
    x: int = Field(description=PIXEL_X)
    y: int = Field(description=PIXEL_Y)


class ScrollAction(Action):
    """Scroll in a direction."""

    action: Literal["scroll"] = "scroll"
    direction: Literal["up", "down", "left", "right"] = Field("down", description="The direction to scroll in.")


class GoBackAction(Action):
    """Go back to the previous page."""

    action: Literal["go_back"] = "go_back"


class RefreshAction(Action):
    """Reload the current page."""

    action: Literal["refresh"] = "refresh"


class WaitAction(Action):
    """Wait for the screen to change or the page to load."""

    action: Literal["wait"] = "wait"


class RestartAction(Action):
    """Restart the task from the beginning."""

    action: Literal["restart"] = "restart"


class AnswerAction(Action):
    """Give the final answer to the task; the last action of an episode."""

    action: Literal["answer"] = "answer"
    content: str = Field(description="The answer.")


NavigationAction = (ClickElementAction | WriteElementAction | ScrollAction | GoBackAction | RefreshAction
                    | WaitAction | RestartAction | AnswerAction)


class NavigationStep(Action):
    """One step of the web agent: what it thinks, what it noted, what it does."""

    thought: str = Field("", description="Brief reasoning that leads to the action.")
    notes: str = Field("", description="Information from the screenshot relevant to the task.")
    action: NavigationAction = Field(description="The action to perform.")


class ComputerStep(NavigationStep):
    """A navigation step for a computer-use client: every action but restart, which a computer has
    no call for."""

    action: (ClickElementAction | WriteElementAction | ScrollAction | GoBackAction | RefreshAction | WaitAction
             | AnswerAction) = Field(description="The action to perform.")


def bounded_schema(schema, *, max_chars: int, max_coordinate: int, coordinates: CoordinateSpace = RESIZED_PIXELS):
    """A copy of a JSON schema with its free strings capped at max_chars characters and its integer
    x and y properties kept in [0, max_coordinate] and described in `coordinates` (the family's space).

    Decoding then ends within a bounded number of tokens whatever the model does (a thought cannot
    ramble on, a coordinate cannot grow digits forever), and positions stay on the screen.
    Enums and constants are left alone.
    """
    if isinstance(schema, list):
        return [bounded_schema(item, max_chars=max_chars, max_coordinate=max_coordinate, coordinates=coordinates)
                for item in schema]
    if not isinstance(schema, dict):
        return schema
    bounded = {key: bounded_schema(value, max_chars=max_chars, max_coordinate=max_coordinate, coordinates=coordinates)
               for key, value in schema.items()}
    if bounded.get("type") == "string" and "enum" not in bounded and "const" not in bounded:
        bounded["maxLength"] = min(max_chars, bounded.get("maxLength", max_chars))
    for axis, description in zip(("x", "y"), coordinates.axis_descriptions):
        coordinate = bounded.get("properties", {}).get(axis)
        if isinstance(coordinate, dict) and coordinate.get("type") == "integer":
            coordinate["minimum"] = max(0, coordinate.get("minimum", 0))
            coordinate["maximum"] = min(max_coordinate, coordinate.get("maximum", max_coordinate))
            coordinate["description"] = description
    return bounded


def navigation_prompt(schema: dict) -> str:
    """The system turn of a navigation step: the Surfer-H style instruction with the step's schema."""
    return ("You are a web agent. Each turn you see a screenshot of the browser, the task and the actions so "
            "far. Think briefly, note what the screenshot says about the task, and choose the next action. "
            f"Answer with JSON following this schema: {json.dumps(schema)}")


def navigation_state(task: str, previous_actions: list[str]) -> str:
    """The user turn's text beside the screenshot."""
    return json.dumps({"task": task, "previous_actions": previous_actions})


# --- Hcompany's agent loop (Holo3, Holo3.1, Holo4) ----------------------------------------------------


# Each tool of the agent loop by its name, as the Surfer-H action it is: a computer-use client's calls
# are made from those.
SURFER_H_ACTION = {"click": ClickElementAction, "write": WriteElementAction, "scroll": ScrollAction,
                   "go_back": GoBackAction, "refresh": RefreshAction, "wait": WaitAction, "answer": AnswerAction}
# Where the loop's tools are worded otherwise: they act on an element at its position, in 0-1000.
TOOL_DESCRIPTIONS = {"click": "Click an element at its position.",
                     "write": "Click an element at its position and type content into it. Don't press Enter."}
POSITIONS = {"x": Field(description=NORMALIZED_X), "y": Field(description=NORMALIZED_Y)}


def agent_loop_tool(tool_name: str) -> type[Action]:
    """The Surfer-H action of that name as a tool of the agent loop: `tool_name` in place of `action`,
    beside the same arguments."""
    action = SURFER_H_ACTION[tool_name]
    arguments = {name: (field.annotation, POSITIONS.get(name, field)) for name, field in action.model_fields.items()
                 if name != "action"}
    return create_model(f"{tool_name.title().replace('_', '')}Tool", __base__=Action,
                        __doc__=TOOL_DESCRIPTIONS.get(tool_name, action.__doc__),
                        tool_name=(Literal[tool_name], tool_name), **arguments)


AgentLoopTool = Union[tuple(agent_loop_tool(name) for name in SURFER_H_ACTION)]  # noqa: UP007 (built at run time)


class AgentStep(Action):
    """One step of Hcompany's agent loop (hub.hcompany.ai/agent-loop): a note (the model's memory across
    steps, whose past reasoning the template drops), a one-line thought, and one flat tool call."""

    note: str | None = Field(description="What on this screen later steps will need; null when nothing new.")
    thought: str = Field(description="A one-line plan for the next action.")
    tool_call: AgentLoopTool = Field(description="The action: tool_name beside its arguments.")


# --- computer-use harnesses: how a family is asked for one step ----------------------------------------

class SurferH:
    """Holo1.5 and Holo2: Surfer-H's step, asked on the latest screenshot alone with the task and the
    actions so far beside it, so the prompt stays one screenshot long."""

    step = ComputerStep

    @staticmethod
    def messages(conversation: list[dict], schema: dict) -> list[dict]:
        """The navigation turn of a chat conversation (the task: every user text; the actions: every
        assistant text; its latest image)."""
        task = "\n".join(part["text"] for message in conversation if message["role"] == "user"
                         for part in as_parts(message["content"] or "") if part.get("type") == "text")
        actions = [message["content"] for message in conversation
                   if message["role"] == "assistant" and message["content"]]
        screenshot = [part for message in conversation for part in as_parts(message["content"] or "")
                      if part.get("type") == "image_url"][-1]
        return [{"role": "system", "content": navigation_prompt(schema)},
                {"role": "user", "content": [screenshot, {"type": "text", "text": navigation_state(task, actions)}]}]

    @staticmethod
    def action(step: ComputerStep) -> NavigationAction:
        return step.action


class AgentLoop:
    """Holo3 and later: Hcompany's agent loop. The whole conversation in its chat layout: the step's
    schema in the system turn's <output_format> block, the task, each screenshot a user turn wrapped
    in <observation>, each step the assistant's JSON; only the 3 latest screenshots kept."""

    step = AgentStep

    @staticmethod
    def messages(conversation: list[dict], schema: dict) -> list[dict]:
        turns = [{"role": "system", "content": f"{AGENT_LOOP_INSTRUCTION}\n<output_format>\n{json.dumps(schema)}\n"
                                               "</output_format>"}]
        for message in conversation:
            parts = as_parts(message["content"] or "")
            if message["role"] == "assistant":
                turns.append({"role": "assistant", "content": "".join(part.get("text", "") for part in parts)})
            elif any(part.get("type") == "image_url" for part in parts):
                turns.append({"role": "user", "content": [{"type": "text", "text": "<observation>"}, *parts,
                                                          {"type": "text", "text": "</observation>"}]})
            else:
                turns.append({"role": "user", "content": parts})
        return evict_screenshots(turns)

    @staticmethod
    def action(step: AgentStep) -> NavigationAction:
        call = step.tool_call
        return SURFER_H_ACTION[call.tool_name](**call.model_dump(exclude={"tool_name"}))


AGENT_LOOP_INSTRUCTION = ("You are a computer-use agent. Each turn you see an observation of the screen. Plan in your "
                          "reasoning, then answer one JSON step: a note of what later steps will need (null when "
                          "nothing new), a one-line thought, and one tool call. Give positions as integers in "
                          "[0, 1000] of the screenshot. Call answer when the task is done.")

Harness = type[SurferH] | type[AgentLoop]


# --- the image budget of an agent loop ----------------------------------------------------------------

MAX_IMAGES_PER_REQUEST = 5  # what Hcompany's Models API takes in one request (hub.hcompany.ai/models)
SCREENSHOTS_KEPT = 3  # the latest screenshots Hcompany's Holo3 agent loop keeps in its history
EVICTED = "[screenshot evicted]"  # what an older screenshot's place says instead
# An image part, and the text part that takes its place: chat completions' (OpenAI's and Holo's own
# image part) and the Responses API's.
EVICTED_PART = {"image_url": "text", "image": "text", "input_image": "input_text"}


def evict_screenshots(messages: list[dict], keep: int = SCREENSHOTS_KEPT) -> list[dict]:
    """The messages with only their `keep` latest images: each older image part is replaced, in place,
    by the text part `[screenshot evicted]`, so every turn keeps its layout and the model still sees
    that a screenshot was there. The messages given are left as they are.

    Hcompany's Holo3 harness keeps the 3 latest screenshots (its models take at most 5 images a
    request). On a server with a prefix cache, a step that evicts one re-reads the conversation from
    that screenshot on: the prompt before it is the only prefix the previous step's prompt shares.
    """
    if not 0 <= keep <= MAX_IMAGES_PER_REQUEST:
        raise ValueError(f"keep must be in [0, {MAX_IMAGES_PER_REQUEST}] (images a request takes), got {keep}")
    seen, evicted = 0, []
    for message in reversed(messages):
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in reversed(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind in EVICTED_PART:
                    seen += 1
                    if seen > keep:
                        part = {"type": EVICTED_PART[kind], "text": EVICTED}
                parts.append(part)
            message = {**message, "content": parts[::-1]}
        evicted.append(message)
    return evicted[::-1]
