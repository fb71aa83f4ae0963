"""The served model as the routes reach it: by its name once it is ready, with the server's metrics
around its generations, and the helpers built from its tokenizer (grammars, logprob strings) on
first use, which only comes once the model is ready."""

import time
from contextlib import aclosing
from functools import cached_property

from fastapi import Request

from ..constrain import Grammars
from ..engine.sampling import SamplingParams
from ..engine.worker import Engine, Generation
from .errors import APIError
from .logprobs import TokenStrings
from .metrics import Metrics


class MeteredGeneration:
    """A generation whose latency, tokens and cancellation are counted on the server's metrics."""

    def __init__(self, generation: Generation, metrics: Metrics):
        self.generation, self.metrics = generation, metrics
        self.submitted = time.perf_counter()
        self.cancelled = False

    @property
    def cached_tokens(self) -> int:
        return self.generation.cached_tokens

    def cancel(self) -> None:
        """Stop the sequence at the engine's next step (no-op once it has finished)."""
        if not (self.cancelled or self.generation.finished):
            self.metrics.cancelled.inc()
        self.cancelled = True
        self.generation.cancel()

    async def __aiter__(self):
        last = None
        try:
            async with aclosing(aiter(self.generation)) as chunks:
                async for chunk in chunks:
                    now = time.perf_counter()
                    if last is None:
                        self.metrics.first_token(now - self.submitted, self.cached_tokens)
                    else:
                        self.metrics.next_token(now - last)
                    last = now
                    yield chunk
        finally:
            self.cancel()


class Served:
    def __init__(self, engine: Engine, metrics: Metrics):
        self.engine, self.metrics = engine, metrics

    @cached_property
    def grammars(self) -> Grammars:
        engine = self.engine
        return Grammars(engine.prompts.tokenizer, engine.model.config.text_config.vocab_size, engine.eos_token_ids)

    @cached_property
    def token_strings(self) -> TokenStrings:
        return TokenStrings(self.engine.prompts.tokenizer)

    def generate(self, prompt, params: SamplingParams) -> MeteredGeneration:
        """Queue one generation (QueueFull at once when the waiting queue is full)."""
        generation = MeteredGeneration(self.engine.generate(prompt, params), self.metrics)
        self.metrics.prompt_tokens.inc(len(prompt.input_ids))
        return generation

    def generate_many(self, prompts: list, params: list[SamplingParams]) -> list[MeteredGeneration]:
        """Queue several generations at once; none stays queued if the queue fills midway."""
        generations = [MeteredGeneration(g, self.metrics) for g in self.engine.generate_many(prompts, params)]
        self.metrics.prompt_tokens.inc(sum(len(prompt.input_ids) for prompt in prompts))
        return generations


def check_model_name(names: tuple[str, ...], model: str | None) -> None:
    """404 unless the request names one of the served names (or none)."""
    if model is not None and model not in names:
        raise APIError(404, f"model {model!r} is not served here; this server serves "
                       f"{', '.join(map(repr, names))}", param="model", code="model_not_found")


def ready_model(request: Request, model: str | None) -> Served:
    """The served model, once it can take work and the request names it (or none)."""
    served = request.app.state.served
    served.engine.require_ready()
    check_model_name(request.app.state.config.model_names, model)
    return served
