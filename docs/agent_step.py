"""One step of a Holo1.5 web agent against a holo-mlx server, with the openai SDK.

    pip install openai -e .       # holo_mlx.agent holds the action models
    python docs/agent_step.py screen.png "Find the opening hours of the Louvre"

The step asks the model twice, each time under a JSON schema that the server enforces while
decoding, so each answer parses into its pydantic model:

1. navigation: task + screenshot -> NavigationStep (a thought, notes, one action);
2. localization: when the action targets an element, Holo1.5's localization prompt for that
   element -> its click position, which replaces the rough x, y of the navigation answer.

Both requests set `holo.map_coordinates`, so positions come back in the screenshot's own
pixels, ready to click.
"""

import argparse
import base64
import json
import mimetypes

from openai import OpenAI

from holo_mlx.agent import (ClickAbsoluteAction, ClickElementAction, NavigationStep, WriteElementAction,
                            localization_prompt, with_max_string_length)

IN_SCREENSHOT_PIXELS = {"holo": {"map_coordinates": True}}


def json_schema(name: str, schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def navigate(client: OpenAI, model: str, screenshot: str, task: str, history: list[str],
             max_chars: int) -> NavigationStep:
    # Capped strings bound the answer's length: a thought cannot ramble on for thousands of tokens.
    schema = with_max_string_length(NavigationStep.model_json_schema(), max_chars)
    system = ("You are a web agent. Each turn you see a screenshot of the browser, the task and the actions so "
              "far. Think briefly, note what the screenshot says about the task, and choose the next action. "
              f"Answer with JSON following this schema: {json.dumps(schema)}")
    state = json.dumps({"task": task, "previous_actions": history})
    response = client.chat.completions.create(
        model=model, temperature=0, max_tokens=1024,
        messages=[{"role": "system", "content": system},
                  {"role": "user", "content": [{"type": "image_url", "image_url": {"url": screenshot}},
                                               {"type": "text", "text": state}]}],
        response_format=json_schema("navigation_step", schema), extra_body=IN_SCREENSHOT_PIXELS)
    return NavigationStep.model_validate_json(response.choices[0].message.content)


def localize(client: OpenAI, model: str, screenshot: str, element: str) -> ClickAbsoluteAction:
    schema = ClickAbsoluteAction.model_json_schema() | {"required": ["action", "x", "y"]}
    response = client.chat.completions.create(
        model=model, temperature=0, max_tokens=64,
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": screenshot}},
                                               {"type": "text", "text": localization_prompt(element)}]}],
        response_format=json_schema("click_absolute_action", schema), extra_body=IN_SCREENSHOT_PIXELS)
    return ClickAbsoluteAction.model_validate_json(response.choices[0].message.content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("screenshot", help="PNG/JPEG/WebP screenshot of the browser")
    parser.add_argument("task")
    parser.add_argument("--history", action="append", default=[], help="a previous action; repeat for several")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--max-chars", type=int, default=400, help="longest thought, notes or text field")
    args = parser.parse_args()

    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    model = client.models.list().data[0].id
    kind = mimetypes.guess_type(args.screenshot)[0] or "image/png"
    with open(args.screenshot, "rb") as file:
        screenshot = f"data:{kind};base64,{base64.b64encode(file.read()).decode()}"

    step = navigate(client, model, screenshot, args.task, args.history, args.max_chars)
    if isinstance(step.action, (ClickElementAction, WriteElementAction)):
        click = localize(client, model, screenshot, step.action.element)
        step.action.x, step.action.y = click.x, click.y
    print(step.model_dump_json(indent=2))


if __name__ == "__main__":
    main()
