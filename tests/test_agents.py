"""Agent frameworks, unmodified, against the live server on random weights: LangChain's ChatOpenAI
tools, openai-agents on its default (Responses) path with a function tool and with a ComputerTool,
and litellm. The examples of docs/agents.md are these calls."""

import asyncio
import base64
import io
import json
import os
from typing import Annotated

import jsonschema
from pydantic import Field

from holo_mlx.testing import synthetic_screenshot

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm fetches a price list otherwise
os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")  # traces would be sent to OpenAI

CLICK_SCHEMA = {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 99},
                                                 "y": {"type": "integer", "minimum": 0, "maximum": 99}},
                "required": ["x", "y"], "additionalProperties": False}


def screenshot_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    synthetic_screenshot(width, height).save(buffer, format="PNG")
    return buffer.getvalue()


# --- LangChain --------------------------------------------------------------------------------------

def langchain_required_clicks(server, model: str = "holo-tiny", max_tokens: int = 80) -> list[dict]:
    """LangChain's ChatOpenAI with a `click` tool bound, tool_choice required: its calls, each checked
    against the schema LangChain sent (which allows other keys besides x and y)."""
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def click(x: int, y: int) -> str:
        """Click a point of the screen."""
        return "clicked"

    llm = ChatOpenAI(model=model, base_url=f"{server.url}/v1", api_key="none", max_tokens=max_tokens, max_retries=0)
    message = llm.bind_tools([click], tool_choice="required").invoke("Click the OK button")
    assert message.tool_calls and not message.invalid_tool_calls
    for call in message.tool_calls:
        assert call["name"] == "click"
        jsonschema.validate(call["args"], click.tool_call_schema.model_json_schema())
        assert isinstance(call["args"]["x"], int) and isinstance(call["args"]["y"], int)
    return message.tool_calls


def test_langchain_bind_tools_with_tool_choice_required(server):
    langchain_required_clicks(server)


def test_langchain_structured_output_by_function_calling(server):
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class Point(BaseModel):
        x: int = Field(ge=0, le=99)
        y: int = Field(ge=0, le=99)

    llm = ChatOpenAI(model="holo-tiny", base_url=f"{server.url}/v1", api_key="none", max_tokens=80, max_retries=0)
    point = llm.with_structured_output(Point, method="function_calling").invoke("Where is OK?")
    assert isinstance(point, Point) and 0 <= point.x <= 99


# --- openai-agents ----------------------------------------------------------------------------------

def agents_model(server, model: str = "holo-tiny", chat_completions: bool = False):
    """openai-agents' model on the server: its default Responses path, or Chat Completions."""
    from agents import OpenAIChatCompletionsModel, OpenAIResponsesModel
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    kind = OpenAIChatCompletionsModel if chat_completions else OpenAIResponsesModel
    return kind(model=model, openai_client=client)


def run_click_agent(model, max_tokens: int = 60) -> tuple[list, object]:
    """An Agent with a `click` function tool, tool_choice required (random weights would never choose a
    tool) and the tool's result as the answer: the calls it made and the run's result."""
    from agents import Agent, ModelSettings, Runner, function_tool

    calls = []

    @function_tool
    def click(x: Annotated[int, Field(ge=0, le=999)], y: Annotated[int, Field(ge=0, le=999)]) -> str:
        """Click a point of the screen."""
        calls.append((x, y))
        return "clicked"

    agent = Agent(name="holo", instructions="You click buttons.", model=model, tools=[click],
                  # One call of bounded numbers: an answer that runs into max_tokens (parallel calls, an
                  # integer of ever more digits) is an incomplete response, which ends the run.
                  model_settings=ModelSettings(tool_choice="required", max_tokens=max_tokens,
                                               parallel_tool_calls=False),
                  tool_use_behavior="stop_on_first_tool")
    result = asyncio.run(Runner.run(agent, "Click OK", max_turns=2))
    assert calls and all(isinstance(x, int) and isinstance(y, int) for x, y in calls)
    assert result.final_output == "clicked"
    return calls, result


def test_openai_agents_runs_a_function_tool_on_the_responses_path(server):
    run_click_agent(agents_model(server))


def test_openai_agents_drives_a_computer_tool_loop(server):
    from agents import Agent, ModelSettings, Runner
    from agents.computer import Computer
    from agents.exceptions import MaxTurnsExceeded
    from agents.tool import ComputerTool

    display = (640, 400)
    screen = base64.b64encode(screenshot_png(*display)).decode()

    class FakeComputer(Computer):
        """Records every action; every screenshot is the same synthetic screen."""

        def __init__(self):
            self.actions = []

        environment, dimensions = "browser", display

        def screenshot(self) -> str:
            self.actions.append(("screenshot",))
            return screen

        def click(self, x, y, button):
            self.actions.append(("click", x, y))

        def double_click(self, x, y):
            self.actions.append(("double_click", x, y))

        def scroll(self, x, y, scroll_x, scroll_y):
            self.actions.append(("scroll", x, y))

        def type(self, text):
            self.actions.append(("type", text))

        def wait(self):
            self.actions.append(("wait",))

        def move(self, x, y):
            self.actions.append(("move", x, y))

        def keypress(self, keys):
            self.actions.append(("keypress", tuple(keys)))

        def drag(self, path):
            self.actions.append(("drag",))

    computer = FakeComputer()
    # Sampled steps: each run takes another path through the loop.
    agent = Agent(name="holo", instructions="Operate the browser.", model=agents_model(server),
                  tools=[ComputerTool(computer=computer)], model_settings=ModelSettings(max_tokens=400, temperature=1.0))

    async def run() -> str | None:
        try:
            return (await Runner.run(agent, "Open the settings page", max_turns=4)).final_output
        except MaxTurnsExceeded:  # random weights need not answer within the turns
            return None

    async def runs() -> list:
        outcomes = []
        for _ in range(3):  # one event loop: the SDK's client keeps its connections
            computer.actions = []
            outcomes.append((await run(), computer.actions))
        return outcomes

    for answer, actions in asyncio.run(runs()):
        assert actions[0] == ("screenshot",)
        # The step either acted or answered (an `answer` action, whose sampled text may be empty).
        assert answer is not None or len(actions) >= 2
        for action in actions:
            if len(action) == 3:
                assert 0 <= action[1] < display[0] and 0 <= action[2] < display[1], action


# --- litellm ----------------------------------------------------------------------------------------

def test_litellm_tools_call_through_the_openai_provider(server):
    import litellm

    response = litellm.completion(
        model="openai/holo-tiny", api_base=f"{server.url}/v1", api_key="none", max_tokens=80,
        messages=[{"role": "user", "content": "Click OK"}], tool_choice="required", parallel_tool_calls=False,
        tools=[{"type": "function", "function": {"name": "click", "parameters": CLICK_SCHEMA}}])
    calls = response.choices[0].message.tool_calls
    assert calls and response.choices[0].finish_reason == "tool_calls"
    for call in calls:
        jsonschema.validate(json.loads(call.function.arguments), CLICK_SCHEMA)
