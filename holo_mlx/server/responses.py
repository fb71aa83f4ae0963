"""POST /v1/responses, and GET / DELETE of stored responses: OpenAI's Responses API over the chat
path. Input items become chat messages (function calls and their outputs as tool calls and tool
messages, reasoning as the next assistant turn's), the request becomes a chat request, and the answer
becomes output items: a thinking model's reasoning, then a message, function calls, or (with a
computer tool, server/computer.py) computer calls."""

from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from ..engine.stream import GenerationChunk
from . import computer
from .chat import ChatRun, reasoning_tokens, start_chat
from .errors import APIError
from .openapi import API_ERRORS, responses
from .reasoning_fields import effort_of
from .protocol import (ChatCompletionRequest, DeletedResponse, FunctionCallItem, HoloInfo, IncompleteDetails,
                       InputTokensDetails, OutputMessage, OutputText, OutputTokensDetails, ReasoningItem,
                       ReasoningText, ResponseEvent, ResponseObject, ResponsesRequest, ResponseUsage, TruncationInfo,
                       dump, new_id)
from .response_store import ResponseStore, Stored
from .served import ready_model
from .streaming import collect, ending_with_error_event, sse
from .truncation import fitted

router = APIRouter()


# --- input items -> chat messages -----------------------------------------------------------------------

def text_parts(parts, param: str) -> list[dict]:
    """Responses content parts as chat content parts."""
    if isinstance(parts, str):
        return [{"type": "text", "text": parts}]
    if not isinstance(parts, list):
        raise APIError(400, f"{param} must be a string or a list of content parts", param=param)
    converted = []
    for index, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        where = f"{param}.{index}"
        if kind in ("input_text", "output_text") and isinstance(part.get("text"), str):
            converted.append({"type": "text", "text": part["text"]})
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            converted.append({"type": "text", "text": part["refusal"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            # Qwen's per-image pixel budget rides along (content.ImageReader reads it).
            converted.append({"type": "image_url", "image_url": {"url": part["image_url"]},
                              **{key: part[key] for key in ("min_pixels", "max_pixels") if key in part}})
        elif kind == "input_image":
            raise APIError(400, f"{where}: send the image as image_url (a base64 data URL); file ids are not "
                           "supported", param=where)
        else:
            raise APIError(400, f"{where} is not a content part this server reads; expected input_text, "
                           "output_text or input_image (with image_url)", param=where, code="invalid_content_part")
    return converted


def chat_messages(items: str | list[dict], param: str = "input") -> list[dict]:
    """Input items as chat messages (OpenAI's chat format)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict] = []
    reasoning = None  # a reasoning item's text: the reasoning of the assistant turn the next item is part of
    for index, item in enumerate(items):
        where = f"{param}.{index}"
        kind = item.get("type", "message")
        if kind == "reasoning":
            reasoning = reasoning_text(item)
            continue
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise APIError(400, f"{where}.role must be user, system, developer or assistant", param=f"{where}.role")
            messages.append({"role": role, "content": text_parts(item.get("content"), f"{where}.content")})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments")}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":  # text, then its calls: one chat message
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            content = output if isinstance(output, str) else text_parts(output, f"{where}.output")
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": content})
        elif kind in computer.ITEM_TYPES:
            messages.extend(computer.chat_messages(item, where))
        else:
            raise APIError(400, f"{where}: input items of type {kind!r} are not supported", param=f"{where}.type")
        if reasoning is not None and messages and messages[-1]["role"] == "assistant":
            messages[-1]["reasoning_content"] = reasoning
        reasoning = None
    return messages


def reasoning_text(item: dict) -> str:
    """A reasoning item's text: its reasoning_text parts (as this server writes them), else its summary."""
    parts = item.get("content") or item.get("summary")
    return "".join(part.get("text") or "" for part in parts if isinstance(part, dict)) if isinstance(parts, list) else ""


def chat_tools(tools: list[dict] | None) -> list[dict] | None:
    """Function tools in chat's format; other tool types are refused by name (computer tools are
    taken out before, by computer.tool_of)."""
    if not tools:
        return None
    converted = []
    for index, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise APIError(400, f"tools.{index}: tools of type {tool.get('type')!r} are not supported here",
                           param=f"tools.{index}.type")
        converted.append({"type": "function", "function": {key: tool[key] for key in
                                                           ("name", "description", "parameters", "strict") if key in tool}})
    return converted


def echoed_tools(tools: list[dict] | None) -> list[dict]:
    """The request's tools as the response echoes them: function tools with every field OpenAI sends,
    `strict` true as the arguments are held to their schema either way."""
    return [{"type": "function", "name": tool.get("name"), "description": tool.get("description"),
             "parameters": tool.get("parameters"), "strict": True} if tool.get("type") == "function" else tool
            for tool in tools or []]


def tool_choice(body: ResponsesRequest):
    """The request's tool_choice, "none" when max_tool_calls allows no call."""
    if body.max_tool_calls != 0:
        return body.tool_choice
    if body.tool_choice not in (None, "auto", "none"):
        raise APIError(400, "max_tool_calls 0 allows no call, which tool_choice asks for", param="max_tool_calls")
    return "none"


def chat_tool_choice(choice):
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


def response_format(body: ResponsesRequest) -> dict | None:
    form = body.text.format if body.text else None
    if form is None or form.type == "text":
        return None
    if form.type == "json_object":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": form.name or "answer", "schema": form.schema_,
                                                   "strict": form.strict}}


def chat_request(body: ResponsesRequest, conversation: list[dict], tools: list[dict] | None,
                 schema: dict | None) -> ChatCompletionRequest:
    instructions = [{"role": "system", "content": body.instructions}] if body.instructions else []
    fields = {"model": body.model, "messages": instructions + conversation, "max_tokens": body.max_output_tokens,
              "temperature": body.temperature, "top_p": body.top_p, "stream": body.stream,
              "tools": tools, "tool_choice": chat_tool_choice(tool_choice(body)) if tools else None,
              # max_tool_calls 1: the grammar allows one call; more are cut from the answer (Shaped.capped).
              "parallel_tool_calls": body.parallel_tool_calls is not False and body.max_tool_calls != 1,
              "response_format": schema, "chat_template_kwargs": body.chat_template_kwargs,
              # Checked here too, so that a bad effort is named as this request has it.
              "reasoning_effort": effort_of(body.reasoning.effort, "reasoning.effort") if body.reasoning else None,
              "thinking_token_budget": body.thinking_token_budget, "mm_processor_kwargs": body.mm_processor_kwargs,
              "logprobs": body.wants_logprobs, "top_logprobs": body.top_logprobs if body.wants_logprobs else None}
    try:
        return ChatCompletionRequest.model_validate({key: value for key, value in fields.items() if value is not None})
    except ValidationError as error:
        first = error.errors()[0]
        location = ".".join(str(part) for part in first["loc"])
        raise APIError(400, f"{location}: {first['msg']}", param=location) from None


# --- the route --------------------------------------------------------------------------------------------

@router.post("/v1/responses", responses=responses(ResponseObject, *API_ERRORS, stream=ResponseEvent))
async def create_response(body: ResponsesRequest, request: Request):
    store: ResponseStore = request.app.state.responses
    earlier = store.get(body.previous_response_id, "previous_response_id", 400).conversation \
        if body.previous_response_id else []
    conversation = earlier + chat_messages(body.input)
    screen, tools = computer.tool_of(body.tools)
    if screen is not None:
        return await computer_turn(body, request, screen, conversation, chat_tools(tools))
    tools, schema = chat_tools(tools), response_format(body)
    run, conversation, dropped = await fitted_chat(
        body, request, conversation, lambda kept: chat_request(body, kept, tools, schema))
    shaped = Shaped(body, request.app.state.config.model_name, run, conversation, dropped)
    if not body.stream:
        chunks = await collect(request, run.generations[0])
        return shaped.finish(store, shaped.items(chunks), chunks, chunks[-1].finish_reason)
    return StreamingResponse(ending_with_error_event(shaped.events(store)), media_type="text/event-stream")


async def computer_turn(body: ResponsesRequest, request: Request, screen: computer.Screen, conversation: list[dict],
                        tools: list[dict] | None):
    """One computer-use turn: a screenshot call until there is a screenshot, then one navigation step."""
    computer.check(body, tools)
    store, model = request.app.state.responses, request.app.state.config.model_name
    if not computer.screenshots(conversation):
        shaped = Shaped(body, model, None, conversation)
        return shaped.reply(store, [computer.call_item({"type": "screenshot"})], [], "stop")
    family = ready_model(request, body.model).engine.model.family
    harness, coordinates = family.harness, family.coordinates
    schema = computer.step_schema(harness, coordinates)
    run, conversation, dropped = await fitted_chat(body, request, conversation, lambda kept: chat_request(
        computer.navigation_request(body), harness.messages(kept, schema), None, computer.step_format(schema)))
    shaped = Shaped(body, model, run, conversation, dropped)
    chunks = await collect(request, run.generations[0])
    text, finish_reason = "".join(chunk.text for chunk in chunks), chunks[-1].finish_reason
    reasoning = reasoning_items(run.reasoning(chunks))
    try:
        step = harness.step.model_validate_json(text)
    except ValidationError:  # cut short by max_output_tokens: said so by the status
        return shaped.reply(store, reasoning + [message_item(text)], chunks, finish_reason)
    image = run.prompt.images[-1]
    actions, answer = computer.computer_calls(harness.action(step), screen, image.resized_size, image.original_size,
                                              coordinates)
    actions = shaped.capped(actions)
    items = [computer.call_item(action) for action in actions] + ([message_item(answer)] if answer is not None else [])
    # A step the budget closed early still parses and acts; the status says it was cut (incomplete).
    return shaped.reply(store, reasoning + items, chunks, finish_reason, answer={"role": "assistant", "content": text})


async def fitted_chat(body: ResponsesRequest, request: Request, conversation: list[dict],
                      chat_of: Callable[[list[dict]], ChatCompletionRequest]):
    """(the run, the conversation it answers, what truncation dropped): the chat of the whole
    conversation, or with `truncation: "auto"` of as much of it as fits (server/truncation.py), its
    images decoded once however many times it is built."""
    decoded = {}
    return await fitted(conversation, lambda kept: start_chat(chat_of(kept), request, decoded),
                        truncate=body.truncation == "auto")


@router.get("/v1/responses/{response_id}", responses=responses(ResponseObject, 400, 401, 404, 422, 503))
async def get_response(response_id: str, request: Request):
    return request.app.state.responses.get(response_id).response


@router.delete("/v1/responses/{response_id}", responses=responses(DeletedResponse, 400, 401, 404, 422, 503))
async def delete_response(response_id: str, request: Request):
    request.app.state.responses.delete(response_id)
    return dump(DeletedResponse(id=response_id))


class Shaped:
    """One response being answered: its output items, whole or as the event stream the SDKs parse."""

    def __init__(self, body: ResponsesRequest, model: str, run: ChatRun | None, conversation: list[dict],
                 dropped: TruncationInfo | None = None):
        self.body, self.run, self.conversation, self.dropped = body, run, conversation, dropped
        self.response = ResponseObject(
            id=new_id("resp"), status="in_progress", model=model, instructions=body.instructions,
            max_output_tokens=body.max_output_tokens, temperature=body.temperature, top_p=body.top_p,
            tool_choice=body.tool_choice or "auto", tools=echoed_tools(body.tools), store=body.store,
            max_tool_calls=body.max_tool_calls, top_logprobs=body.top_logprobs,
            parallel_tool_calls=True if body.parallel_tool_calls is None else body.parallel_tool_calls,
            previous_response_id=body.previous_response_id, metadata=body.metadata or {}, user=body.user,
            reasoning=body.reasoning.model_dump(include={"effort", "summary"}) if body.reasoning else None,
            text={"format": body.text.format.model_dump(by_alias=True, exclude_none=True)}
            if body.text and body.text.format else {"format": {"type": "text"}},
            truncation=body.truncation or "disabled")

    def items(self, chunks: list[GenerationChunk]) -> list:
        """The answer's items: its reasoning (of a thinking model), then a message and function calls."""
        content, calls = self.run.answer("".join(chunk.text for chunk in chunks))
        items = [message_item(content, self.logprobs([c for c in chunks if c.reasoning is None]))] \
            if content or not calls else []
        return reasoning_items(self.run.reasoning(chunks)) + items + [function_call_item(call)
                                                                      for call in self.capped(calls)]

    def capped(self, calls: list, made: int = 0) -> list:
        """The calls the answer keeps, `made` already in it: the model's further calls past max_tool_calls
        are dropped, as OpenAI ignores them."""
        allowed = self.body.max_tool_calls
        return calls if allowed is None else calls[:max(allowed - made, 0)]

    def logprobs(self, chunks: list[GenerationChunk]) -> list:
        """The logprobs of these answer tokens, when the request includes them."""
        return self.run.served.token_strings.entries(chunks) if self.body.wants_logprobs else []

    def finish(self, store: ResponseStore, items: list, chunks: list[GenerationChunk], finish_reason: str | None,
               answer: dict | None = None) -> dict:
        """The completed response (stored when asked, its answer continuing the conversation as
        `answer` or else as its items say), as a JSON body."""
        prompt_tokens = len(self.run.prompt.input_ids) if self.run else 0
        cached = self.run.generations[0].cached_tokens if self.run else 0
        output_tokens = len(chunks)
        response = self.response
        response.output = items
        response.holo = self.run.holo() if self.run else None  # after the answer: whether it was mapped
        if self.dropped is not None:
            response.holo = response.holo or HoloInfo(images=[])
            response.holo.truncation = self.dropped
        # The budget ended the answer, whatever its items (chat.finish_reason says why).
        cut = finish_reason == "length"
        response.status = "incomplete" if cut else "completed"
        response.incomplete_details = IncompleteDetails(reason="max_output_tokens") if cut else None
        response.usage = ResponseUsage(
            input_tokens=prompt_tokens, output_tokens=output_tokens, total_tokens=prompt_tokens + output_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=cached),
            output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning_tokens(chunks)))
        body = dump(response)
        if self.body.store:
            store.put(Stored(body, self.conversation + [answer or answer_message(items)]))
        return body

    def reply(self, store: ResponseStore, items: list, chunks: list[GenerationChunk], finish_reason: str | None,
              answer: dict | None = None):
        """Items known whole: the JSON body, or the event stream that carries them when asked."""
        body = self.finish(store, items, chunks, finish_reason, answer)
        if not self.body.stream:
            return body

        async def events():
            events = EventStream()
            started = {**body, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None}
            yield events.send("response.created", response=started)
            yield events.send("response.in_progress", response=started)
            for index, item in enumerate(body["output"]):
                if item["type"] in TEXT_EVENTS:
                    for event in text_item_events(events, index, item):
                        yield event
                else:
                    yield events.send("response.output_item.added", output_index=index,
                                      item={**item, "status": "in_progress"})
                    yield events.send("response.output_item.done", output_index=index, item=item)
            yield events.send("response.incomplete" if body["status"] == "incomplete" else "response.completed",
                              response=body)

        return StreamingResponse(ending_with_error_event(events()), media_type="text/event-stream")

    async def events(self, store: ResponseStore):
        """The Responses event stream: created, in_progress, each output item added / its deltas /
        done (the reasoning's before the answer's), then completed (or incomplete)."""
        events = EventStream()
        yield events.send("response.created", response=dump(self.response))
        yield events.send("response.in_progress", response=dump(self.response))
        split = self.run.tools.stream() if self.run.tools is not None else None
        items, chunks, reasoning, message, finish_reason = [], [], None, None, None
        logprobs = []  # of the answer's tokens not yet sent (a tool call's text is held back)
        held = ""  # whitespace outside calls, sent only if text follows it
        async for chunk in self.run.generations[0]:
            chunks.append(chunk)
            finish_reason = chunk.finish_reason
            if chunk.reasoning is not None:
                if reasoning is None:
                    reasoning = reasoning_item("")
                    for event in self.text_opening(events, items, reasoning):
                        yield event
                if chunk.reasoning:
                    yield self.text_delta(events, items, reasoning, chunk.reasoning)
                continue
            if reasoning is not None and reasoning.status == "in_progress":  # the answer began
                for event in self.text_closing(events, items, reasoning):
                    yield event
            logprobs += self.logprobs([chunk])
            piece, calls = (chunk.text, []) if split is None else split.add(chunk.text)
            if chunk.finish_reason and split is not None:
                piece += split.finish()
            if message is None and split is not None and not piece.strip():
                # Whitespace around calls opens no message: the whole answer's text outside calls is stripped.
                held, piece = held + piece, ""
            if piece:
                piece, held = held + piece, ""
                if message is None:
                    message = message_item("")
                    for event in self.text_opening(events, items, message):
                        yield event
                yield self.text_delta(events, items, message, piece, logprobs)
                logprobs = []
            for call in self.capped(calls, sum(isinstance(item, FunctionCallItem) for item in items)):
                for event in self.call_events(events, items, function_call_item(call)):
                    yield event
        for item in (reasoning, message):
            if item is not None and item.status == "in_progress":
                for event in self.text_closing(events, items, item):
                    yield event
        if not any(isinstance(item, (OutputMessage, FunctionCallItem)) for item in items):
            items.append(message_item(""))  # no answer at all: still one (empty) message
        body = self.finish(store, items, chunks, finish_reason)
        kind = "response.incomplete" if body["status"] == "incomplete" else "response.completed"
        yield events.send(kind, response=body)

    @staticmethod
    def text_opening(events: "EventStream", items: list, item: "ReasoningItem | OutputMessage"):
        """A message or reasoning item added to the answer, its text to come."""
        item.status = "in_progress"
        items.append(item)
        yield from item_opening(events, len(items) - 1, dump(item))

    @staticmethod
    def text_delta(events: "EventStream", items: list, item: "ReasoningItem | OutputMessage", delta: str,
                   logprobs: list | None = None) -> str:
        """More of an item's text (a message's with the logprobs of its tokens, when asked)."""
        part = item.content[0]
        part.text += delta
        if logprobs:
            part.logprobs += logprobs
        return text_event(events, "delta", items.index(item), dump(item), delta=delta,
                          logprobs=[entry.model_dump() for entry in logprobs or []])

    @staticmethod
    def text_closing(events: "EventStream", items: list, item: "ReasoningItem | OutputMessage"):
        item.status = "completed"
        yield from item_closing(events, items.index(item), dump(item))

    @staticmethod
    def call_events(events: "EventStream", items: list, call: FunctionCallItem):
        items.append(call)
        index = len(items) - 1
        yield events.send("response.output_item.added", output_index=index,
                          item={**dump(call), "arguments": "", "status": "in_progress"})
        yield events.send("response.function_call_arguments.delta", item_id=call.id, output_index=index,
                          delta=call.arguments)
        yield events.send("response.function_call_arguments.done", item_id=call.id, output_index=index,
                          name=call.name, arguments=call.arguments)
        yield events.send("response.output_item.done", output_index=index, item=dump(call))


# The events of an item's text part, by the item's type.
TEXT_EVENTS = {"message": "response.output_text", "reasoning": "response.reasoning_text"}


def text_item_events(events: "EventStream", index: int, item: dict):
    """The events of a whole message or reasoning item: added, its part, its text in one delta, done."""
    yield from item_opening(events, index, item)
    yield text_event(events, "delta", index, item, delta=item["content"][0]["text"])
    yield from item_closing(events, index, item)


def item_opening(events: "EventStream", index: int, item: dict):
    """A message or reasoning item added, with its (empty) text part."""
    yield events.send("response.output_item.added", output_index=index,
                      item={**item, "status": "in_progress", "content": []})
    yield events.send("response.content_part.added", item_id=item["id"], output_index=index, content_index=0,
                      part={**item["content"][0], "text": ""})


def item_closing(events: "EventStream", index: int, item: dict):
    """A message or reasoning item's text part and the item done, with the whole text."""
    part = item["content"][0]
    yield text_event(events, "done", index, item, text=part["text"])
    yield events.send("response.content_part.done", item_id=item["id"], output_index=index, content_index=0, part=part)
    yield events.send("response.output_item.done", output_index=index, item=item)


def text_event(events: "EventStream", stage: str, index: int, item: dict, logprobs: list | None = None,
               **fields) -> str:
    """An output_text or reasoning_text delta or done event; a message's carries logprobs (those of
    the delta given, else of its whole text)."""
    if item["type"] == "message":
        fields["logprobs"] = item["content"][0]["logprobs"] if logprobs is None else logprobs
    return events.send(f"{TEXT_EVENTS[item['type']]}.{stage}", item_id=item["id"], output_index=index,
                       content_index=0, **fields)


class EventStream:
    def __init__(self):
        self.sequence_number = 0

    def send(self, kind: str, **fields) -> str:
        event = {"type": kind, "sequence_number": self.sequence_number, **fields}
        self.sequence_number += 1
        return f"event: {kind}\n{sse(event)}"


def message_item(text: str, logprobs: list | None = None) -> OutputMessage:
    return OutputMessage(id=new_id("msg"), content=[OutputText(text=text, logprobs=logprobs or [])])


def reasoning_item(text: str) -> ReasoningItem:
    return ReasoningItem(id=new_id("rs"), content=[ReasoningText(text=text)])


def reasoning_items(text: str | None) -> list[ReasoningItem]:
    """The reasoning item of an answer (none when its prompt opened no reasoning)."""
    return [] if text is None else [reasoning_item(text)]


def function_call_item(call) -> FunctionCallItem:
    return FunctionCallItem(id=new_id("fc"), call_id=call.id, name=call.name, arguments=call.arguments)


def answer_message(items: list) -> dict:
    """A response's output items as the chat message that continues the conversation."""
    text = "".join(part.text for item in items if isinstance(item, OutputMessage) for part in item.content)
    calls = [{"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}}
             for item in items if isinstance(item, FunctionCallItem)]
    reasoning = [part.text for item in items if isinstance(item, ReasoningItem) for part in item.content]
    return {"role": "assistant", "content": text or None, **({"tool_calls": calls} if calls else {}),
            **({"reasoning_content": "".join(reasoning)} if reasoning else {})}
