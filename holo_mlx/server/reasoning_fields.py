"""A chat request's reasoning controls, checked: reasoning_effort (the Responses API's reasoning.effort),
thinking_token_budget and chat_template_kwargs into the chat template's variables and the reasoning budget."""

import json

from .errors import APIError
from .inputs import template_kwargs
from .protocol import ChatCompletionRequest

# Efforts that turn thinking off: OpenAI's "none", and the names other servers and clients use.
OFF = ("none", "disabled", "off")
# Passed to the chat template as `reasoning_effort`: a template that reads it decides what each means
# (Holo2's and Holo3's do not: for them only thinking on or off differs).
LEVELS = ("minimal", "low", "medium", "high", "xhigh")


def effort_of(value, param: str) -> str | None:
    if value is None or (isinstance(value, str) and value in OFF + LEVELS):
        return value
    raise APIError(400, f"{param} must be one of {', '.join(OFF + LEVELS)}; got {json.dumps(value)}", param=param)


def budget_of(value, param: str = "thinking_token_budget") -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise APIError(400, f"{param} must be an integer of at least 0 (0: no reasoning), or null for the server's "
                   f"--reasoning-budget; got {json.dumps(value)}", param=param)


def reasoning_controls(body: ChatCompletionRequest, default_budget: int | None) -> tuple[dict, int | None]:
    """(the chat template's variables, the most reasoning tokens or None) of a request: its
    chat_template_kwargs, over what its effort and budget imply. No reasoning at all (effort "none",
    a budget of 0) is the template's thinking off (`enable_thinking: false`), as llama.cpp does; a
    template that opens the block anyway has it closed at once by the budget."""
    explicit = template_kwargs(body.chat_template_kwargs)
    effort = effort_of(body.reasoning_effort, "reasoning_effort")
    budget = budget_of(body.thinking_token_budget)
    budget = default_budget if budget is None else budget
    implied = {}
    if effort in OFF or budget == 0:
        implied["enable_thinking"] = False
    elif effort is not None:
        implied["reasoning_effort"] = effort
    return {**implied, **explicit}, budget
