"""Reasoning controls of thinking models on Holo2 (Qwen3-VL's template) and Holo3 (Qwen3.5's):
thinking_token_budget (per request, and --reasoning-budget as the server's default) forces `</think>`
after exactly that many reasoning tokens, whole and streamed, alone and in a batch, with or without a
grammar for the answer; reasoning_effort (Responses: reasoning.effort) turns thinking off or reaches the
chat template. Random weights, which never close their reasoning on their own: every close below is the
budget's. The real server and the real openai client."""

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import jsonschema
import openai
import pytest

from holo_mlx.engine.sampling import SamplingParams, TokenChooser
from holo_mlx.prompt import PromptBuilder
from holo_mlx.reasoning import ThinkBlock, ThinkTokens
from holo_mlx.server.reasoning_fields import LEVELS, OFF
from holo_mlx.settings import parse_config
from test_server import Server, error_of
from test_structured import POINT, response_format
from test_tools import ASK, CLICK, assert_valid_calls

HELLO = [{"role": "user", "content": "Hello"}]
FAMILIES = ["holo2_root_checkpoint", "holo3_checkpoint"]
DEFAULT_BUDGET = 3  # the budgeted servers' --reasoning-budget
# Written before the conversation by the effort checkpoint's template: the effort letter by letter, so
# that each level gives the prompt its own length.
SPELL_EFFORT = "{%- if reasoning_effort is defined %}{%- for letter in reasoning_effort %}{{ letter + ' ' }}" \
               "{%- endfor %}{%- endif %}"


@dataclass
class Thinker:
    """A server of a thinking model, its openai client and its model's prompt builder."""

    server: Server
    builder: PromptBuilder

    def __post_init__(self):
        self.client = self.server.client()
        self.model = self.client.models.list().data[0].id

    def chat(self, **fields):
        return self.client.chat.completions.create(model=self.model, **{"messages": HELLO, "temperature": 0, **fields})

    def prompt_tokens(self, messages=HELLO, **template_kwargs) -> list[int]:
        """The prompt this model's template renders for `messages` with these variables."""
        return self.builder.build(messages, template_kwargs=template_kwargs).input_ids


@pytest.fixture(scope="module", params=FAMILIES, ids=["holo2", "holo3"])
def checkpoint(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def thinker(shared_server, checkpoint) -> Thinker:
    # test_server_engine's family server too (the same flags): no reasoning budget.
    return Thinker(shared_server("--model", str(checkpoint), "--max-num-seqs", "4"),
                   PromptBuilder.from_pretrained(checkpoint))


@pytest.fixture(scope="module")
def budgeted(shared_server, checkpoint) -> Thinker:
    return Thinker(shared_server("--model", str(checkpoint), "--max-num-seqs", "4",
                                 "--reasoning-budget", str(DEFAULT_BUDGET)), PromptBuilder.from_pretrained(checkpoint))


@pytest.fixture(scope="module")
def effort_thinker(shared_server, holo2_root_checkpoint, module_tmp_factory) -> Thinker:
    """Holo2 with a template that reads `reasoning_effort` (Holo's own templates do not)."""
    path = module_tmp_factory("effort")
    shutil.copytree(holo2_root_checkpoint, path, dirs_exist_ok=True)
    config = json.loads((path / "tokenizer_config.json").read_text())
    template = SPELL_EFFORT + config["chat_template"]
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    (path / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    return Thinker(shared_server("--model", str(path)), PromptBuilder.from_pretrained(path))


def tokens_of(choice) -> list[str]:
    return [entry.token for entry in choice.logprobs.content]


def usage_reasoning(response) -> int:
    return response.usage.completion_tokens_details.reasoning_tokens


def reasoning_of(message) -> str | None:
    return message.model_extra["reasoning_content"]


# --- the budget ----------------------------------------------------------------------------------

@pytest.mark.parametrize("budget", [1, 4])
def test_the_budget_closes_the_reasoning_after_exactly_that_many_tokens(thinker, budget):
    free = thinker.chat(max_tokens=12)
    assert usage_reasoning(free) == 12  # unbudgeted, the reasoning never closes
    response = thinker.chat(max_tokens=12, logprobs=True, extra_body={"thinking_token_budget": budget})
    choice = response.choices[0]
    # The same reasoning tokens, then `</think>` and the blank line forced, then the free answer.
    assert tokens_of(choice)[:budget + 2] == tokens_of(thinker.chat(max_tokens=budget, logprobs=True).choices[0]) \
        + ["</think>", "\n\n"]
    assert usage_reasoning(response) == budget + 1  # `</think>` counts, as when the model closes
    assert reasoning_of(choice.message) == reasoning_of(free.choices[0].message)[:len(reasoning_of(choice.message))]
    assert choice.message.content and response.usage.completion_tokens == 12


def test_streamed_reasoning_stops_at_the_budget(thinker):
    budget = 3
    whole = thinker.chat(max_tokens=10, extra_body={"thinking_token_budget": budget})
    chunks = list(thinker.chat(max_tokens=10, stream=True, stream_options={"include_usage": True}, logprobs=True,
                               extra_body={"thinking_token_budget": budget}))
    choices = [chunk.choices[0] for chunk in chunks if chunk.choices][1:]  # a token each, after the role's
    assert [choice.logprobs.content[0].token for choice in choices].index("</think>") == budget
    reasoning = [choice.delta.model_extra["reasoning_content"] for choice in choices[:budget]]
    assert all(reasoning) and "".join(reasoning) == reasoning_of(whole.choices[0].message)
    assert not any(choice.delta.model_extra["reasoning_content"] for choice in choices[budget:])
    assert "".join(choice.delta.content or "" for choice in choices) == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == budget + 1 == usage_reasoning(whole)


def test_budgets_are_each_requests_own_in_a_batch(thinker):
    budgets = [1, None, 5, 3]

    def run(budget):
        extra = {} if budget is None else {"thinking_token_budget": budget}
        response = thinker.chat(max_tokens=10, logprobs=True, extra_body=extra)
        return usage_reasoning(response), tokens_of(response.choices[0])

    alone = [run(budget) for budget in budgets]
    with ThreadPoolExecutor(len(budgets)) as pool:
        together = list(pool.map(run, budgets))
    assert together == alone
    assert [reasoning for reasoning, _ in together] == [2, 10, 6, 4]


def test_a_budget_closes_into_the_answers_grammar(thinker):
    response = thinker.chat(max_tokens=48, response_format=response_format(POINT),
                            extra_body={"thinking_token_budget": 2})
    assert usage_reasoning(response) == 3 and reasoning_of(response.choices[0].message)
    jsonschema.validate(json.loads(response.choices[0].message.content), POINT)
    calls = thinker.chat(messages=ASK, tools=[CLICK], tool_choice="required", max_tokens=48,
                         extra_body={"thinking_token_budget": 2})
    assert usage_reasoning(calls) == 3 and calls.choices[0].finish_reason == "tool_calls"
    assert_valid_calls(calls.choices[0].message.tool_calls, {"click"})


def test_a_budget_of_zero_is_thinking_off(thinker):
    response = thinker.chat(max_tokens=6, logprobs=True, extra_body={"thinking_token_budget": 0})
    off = thinker.chat(max_tokens=6, logprobs=True, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert reasoning_of(response.choices[0].message) is None and usage_reasoning(response) == 0
    assert response.usage.prompt_tokens == off.usage.prompt_tokens == len(thinker.prompt_tokens(enable_thinking=False))
    assert tokens_of(response.choices[0]) == tokens_of(off.choices[0])
    # A template that opens the block all the same (here: told to) has it closed at once.
    opened = thinker.chat(max_tokens=6, logprobs=True, extra_body={
        "thinking_token_budget": 0, "chat_template_kwargs": {"enable_thinking": True}})
    assert tokens_of(opened.choices[0])[:2] == ["</think>", "\n\n"] and usage_reasoning(opened) == 1
    assert reasoning_of(opened.choices[0].message) == ""


def test_the_servers_budget_holds_requests_that_set_none(budgeted):
    assert usage_reasoning(budgeted.chat(max_tokens=10)) == DEFAULT_BUDGET + 1
    assert usage_reasoning(budgeted.chat(max_tokens=10, extra_body={"thinking_token_budget": 5})) == 6
    off = budgeted.chat(max_tokens=4, extra_body={"thinking_token_budget": 0})
    assert reasoning_of(off.choices[0].message) is None and usage_reasoning(off) == 0
    response = budgeted.client.responses.create(model=budgeted.model, input="Hello", max_output_tokens=10,
                                                temperature=0)
    assert response.usage.output_tokens_details.reasoning_tokens == DEFAULT_BUDGET + 1
    assert [item.type for item in response.output] == ["reasoning", "message"]


def test_responses_take_the_budget_as_a_top_level_field(budgeted):
    fields = {"model": budgeted.model, "input": "Hello", "max_output_tokens": 10, "temperature": 0,
              "extra_body": {"thinking_token_budget": 1}}
    whole = budgeted.client.responses.create(**fields)
    assert whole.usage.output_tokens_details.reasoning_tokens == 2
    with budgeted.client.responses.stream(**fields) as stream:
        events = list(stream)
    assert [event.type for event in events].count("response.reasoning_text.delta") == 1
    assert events[-1].response.output[0].content[0].text == whole.output[0].content[0].text


# --- the effort --------------------------------------------------------------------------------------

@pytest.mark.parametrize("effort", OFF)
def test_effort_none_turns_thinking_off(thinker, effort):
    response = thinker.chat(max_tokens=4, reasoning_effort=effort)
    assert reasoning_of(response.choices[0].message) is None and usage_reasoning(response) == 0
    prompt = thinker.prompt_tokens(enable_thinking=False)
    assert thinker.builder.tokenizer.decode(prompt).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert response.usage.prompt_tokens == len(prompt)
    # chat_template_kwargs win over what the effort implies.
    on = thinker.chat(max_tokens=4, reasoning_effort=effort,
                      extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    assert usage_reasoning(on) == 4
    answer = thinker.client.responses.create(model=thinker.model, input="Hello", max_output_tokens=4,
                                             reasoning={"effort": effort})
    assert [item.type for item in answer.output] == ["message"] and answer.reasoning.effort == effort


def test_holo_templates_read_no_effort_level(thinker):
    # Qwen3's and Qwen3.5's templates take no `reasoning_effort`: a level leaves thinking as it is.
    plain = thinker.chat(max_tokens=4)
    for level in LEVELS:
        response = thinker.chat(max_tokens=4, reasoning_effort=level)
        assert response.usage.prompt_tokens == plain.usage.prompt_tokens and usage_reasoning(response) == 4


def test_effort_levels_reach_the_template_as_reasoning_effort(effort_thinker):
    lengths = {}
    for level in LEVELS:
        response = effort_thinker.chat(max_tokens=1, reasoning_effort=level)
        lengths[level] = response.usage.prompt_tokens
        assert lengths[level] == len(effort_thinker.prompt_tokens(reasoning_effort=level))
    assert len(set(lengths.values())) == len(LEVELS)  # each level renders its own prompt
    assert effort_thinker.chat(max_tokens=1).usage.prompt_tokens == len(effort_thinker.prompt_tokens())
    # chat_template_kwargs win; the Responses API's reasoning.effort is the same variable.
    assert effort_thinker.chat(max_tokens=1, reasoning_effort="high", extra_body={
        "chat_template_kwargs": {"reasoning_effort": "low"}}).usage.prompt_tokens == lengths["low"]
    response = effort_thinker.client.responses.create(model=effort_thinker.model, input="Hello", max_output_tokens=1,
                                                      reasoning={"effort": "xhigh"})
    assert response.usage.input_tokens == lengths["xhigh"]


# --- refusals ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, fields, param", [
    ("/v1/chat/completions", {"thinking_token_budget": -1}, "thinking_token_budget"),
    ("/v1/chat/completions", {"thinking_token_budget": 2.5}, "thinking_token_budget"),
    ("/v1/chat/completions", {"thinking_token_budget": "8"}, "thinking_token_budget"),
    ("/v1/chat/completions", {"thinking_token_budget": True}, "thinking_token_budget"),
    ("/v1/chat/completions", {"reasoning_effort": "High"}, "reasoning_effort"),
    ("/v1/chat/completions", {"reasoning_effort": "max"}, "reasoning_effort"),
    ("/v1/chat/completions", {"reasoning_effort": 1}, "reasoning_effort"),
    ("/v1/responses", {"thinking_token_budget": -3}, "thinking_token_budget"),
    ("/v1/responses", {"reasoning": {"effort": "maximal"}}, "reasoning.effort"),
    ("/v1/responses", {"reasoning": {"effort": False}}, "reasoning.effort"),
])
def test_bad_reasoning_controls_are_400s_naming_them(thinker, path, fields, param):
    payload = {"messages": HELLO} if path == "/v1/chat/completions" else {"input": "Hello"}
    response = thinker.server.post(path, {**payload, "max_tokens": 4, **fields})
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):  # as the SDK sees it
        thinker.chat(max_tokens=4, extra_body=fields) if path == "/v1/chat/completions" else \
            thinker.client.responses.create(model=thinker.model, input="Hello", max_output_tokens=4, extra_body=fields)


def test_the_servers_budget_is_minus_one_for_none_and_refuses_less(capsys):
    assert parse_config([], {}).reasoning_budget is None
    assert parse_config(["--reasoning-budget", "-1"], {}).reasoning_budget is None
    assert parse_config([], {"HOLO_REASONING_BUDGET": "0"}).reasoning_budget == 0
    with pytest.raises(SystemExit):
        parse_config(["--reasoning-budget", "-2"], {})
    assert "argument --reasoning-budget: must be -1 (no limit) or at least 0, got -2" in capsys.readouterr().err


# --- the engine's side -----------------------------------------------------------------------------

def test_a_budgeted_row_waits_for_its_token_only_around_the_close():
    """A free row is pipelined (its next mask does not need the token in flight) but for the steps
    where the budget closes it; a grammar row waits at every step. The scheduler's order: a row's
    mask, then the previous token read, unless the row waits."""
    think = ThinkTokens(open=1, close=2, separator=(3,))
    assert ThinkBlock(think, (0,), 8).holding(None) is None  # nothing to hold: no constraint at all
    state = ThinkBlock(think, end_tokens=(0,), vocab_size=8, budget=3).holding(None).constraint()
    chooser = TokenChooser(SamplingParams(constraint=state), set(), 8)
    waits, masks, in_flight = [], [], None
    for token in [5, 6, 7, 2, 3, 4, 4]:  # three reasoning tokens, the forced close, the answer
        waits.append(chooser.waits())
        if waits[-1] and in_flight is not None:
            state.advance(in_flight)
            in_flight = None
        mask = chooser.allowed()
        masks.append(None if mask is None else mask.tolist().index(True))
        if in_flight is not None:
            state.advance(in_flight)
        in_flight = token
    assert waits == [False, False, False, True, True, True, False]
    assert masks == [None, None, None, 2, 3, None, None] and not state.closed_early
    assert not TokenChooser(SamplingParams(), set(), 8).waits()
