"""One step of a Holo web agent (Holo1.5 or Holo2) against a holo-mlx server, with the openai SDK.

    pip install openai -e .       # holo_mlx.agent holds the action models
    python docs/agent_step.py screen.png "Find the opening hours of the Louvre"

The step asks the model twice, each time under a JSON schema that the server enforces while
decoding, so each answer parses:

1. navigation (chat completions): task + screenshot -> a NavigationStep (a thought, notes, one
   action), its x, y described in the coordinates the served family answers in (/health says
   which), with `holo.map_coordinates` so its positions come back in the screenshot's own pixels;
2. localization (the server's /v1/localize, with the family's own prompt): when the action targets
   an element, that element's click position, which replaces the navigation's rough x, y.
"""

import argparse
import base64
import mimetypes

import httpx
from openai import OpenAI

from holo_mlx.agent import (ClickElementAction, NavigationStep, WriteElementAction, bounded_schema, navigation_prompt,
                            navigation_state)
from holo_mlx.coordinates import SPACES, CoordinateSpace


def navigate(client: OpenAI, model: str, coordinates: CoordinateSpace, screenshot: str, task: str,
             history: list[str], max_chars: int) -> NavigationStep:
    # Bounded strings and coordinates bound the answer's length: a thought cannot ramble on.
    schema = bounded_schema(NavigationStep.model_json_schema(), max_chars=max_chars,
                            max_coordinate=coordinates.scale or 9999, coordinates=coordinates)
    state = navigation_state(task, history)
    response = client.chat.completions.create(
        model=model, temperature=0, max_tokens=1024,
        messages=[{"role": "system", "content": navigation_prompt(schema)},
                  {"role": "user", "content": [{"type": "image_url", "image_url": {"url": screenshot}},
                                               {"type": "text", "text": state}]}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "navigation_step", "schema": schema, "strict": True}},
        extra_body={"holo": {"map_coordinates": True}})
    return NavigationStep.model_validate_json(response.choices[0].message.content)


def localize(client: OpenAI, screenshot: str, element: str) -> tuple[int, int]:
    """The element's click position in the screenshot's pixels (/v1/localize is not OpenAI's: a plain POST)."""
    click = client.post("/localize", body={"image": screenshot, "target": element}, cast_to=httpx.Response).json()
    return click["original"]["x"], click["original"]["y"]


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
    health = httpx.get(args.base_url.removesuffix("/v1") + "/health").json()
    kind = mimetypes.guess_type(args.screenshot)[0] or "image/png"
    with open(args.screenshot, "rb") as file:
        screenshot = f"data:{kind};base64,{base64.b64encode(file.read()).decode()}"

    step = navigate(client, model, SPACES[health["coordinates"]], screenshot, args.task, args.history, args.max_chars)
    if isinstance(step.action, (ClickElementAction, WriteElementAction)):
        step.action.x, step.action.y = localize(client, screenshot, step.action.element)
    print(step.model_dump_json(indent=2))


if __name__ == "__main__":
    main()
