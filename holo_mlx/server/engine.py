"""The one object that owns the model: all MLX work runs on a dedicated thread fed by a queue.

The event loop only enqueues jobs and awaits their results, so it never blocks on MLX. A job
yields results one at a time; when its consumer goes away (client disconnect, error) the job is
marked cancelled and stops at its next result, freeing its KV cache.
"""

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from .. import load
from ..embed import embed_prompts
from ..generate import SamplingParams, stream_generate
from ..runtime import device_name
from .common import TokenStrings
from .errors import APIError

log = logging.getLogger("holo_mlx.server")
_DONE = object()


class _Job:
    def __init__(self, produce: Callable[[], Iterator], loop: asyncio.AbstractEventLoop):
        self.produce = produce
        self.loop = loop
        self.results: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()

    def run(self) -> None:
        try:
            for item in self.produce():
                if self.cancelled.is_set():
                    break
                self._push(item)
            self._push(_DONE)
        except Exception as error:  # handed to the awaiting request, which answers with it
            self._push(error)

    def _push(self, item) -> None:
        self.loop.call_soon_threadsafe(self.results.put_nowait, item)


class Engine:
    def __init__(self, model_path: str | Path, *, max_side: int | None, max_pixels: int | None,
                 max_model_len: int | None = None):
        self.model_path = str(model_path)
        self.max_side, self.max_pixels = max_side, max_pixels
        self.requested_max_model_len = max_model_len
        self.status, self.load_error = "loading", None
        self.model = self.prompts = self.token_strings = None
        self.active_jobs = 0
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="mlx-engine", daemon=True)

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=10)

    def _serve(self) -> None:
        try:
            self.model, self.prompts = load(self.model_path, max_side=self.max_side, max_pixels=self.max_pixels)
            self.token_strings = TokenStrings(self.prompts.tokenizer)
            self.status = "ready"
            log.info("model %s ready on %s (%s)", self.model_path, device_name(), self.dtype)
        except Exception as error:
            self.status, self.load_error = "error", f"{type(error).__name__}: {error}"
            log.error("could not load %s: %s", self.model_path, self.load_error)
            return
        while (job := self._jobs.get()) is not None:
            self.active_jobs += 1
            job.run()
            self.active_jobs -= 1

    # --- facts -------------------------------------------------------------------------------------

    @property
    def dtype(self) -> str | None:
        return str(self.model.dtype).removeprefix("mlx.core.") if self.model is not None else None

    @property
    def waiting(self) -> int:
        return self._jobs.qsize()

    @property
    def max_model_len(self) -> int:
        limit = self.model.config.text_config.max_position_embeddings
        return min(limit, self.requested_max_model_len or limit)

    @property
    def eos_token_ids(self) -> set[int]:
        return set(self.model.config.eos_token_id)

    def require_ready(self) -> None:
        if self.status == "loading":
            raise APIError(503, "the model is still loading; retry shortly", code="model_loading",
                           headers={"Retry-After": "5"})
        if self.status == "error":
            raise APIError(503, f"the model failed to load: {self.load_error}", code="model_load_failed")

    # --- work --------------------------------------------------------------------------------------

    async def _results(self, produce: Callable[[], Iterator]) -> AsyncIterator:
        job = _Job(produce, asyncio.get_running_loop())
        self._jobs.put(job)
        try:
            while (item := await job.results.get()) is not _DONE:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            job.cancelled.set()

    def generate(self, prompt, params: SamplingParams) -> AsyncIterator:
        """GenerationChunks for one prompt, produced on the MLX thread."""
        return self._results(lambda: stream_generate(
            self.model, self.prompts.tokenizer, prompt, params, self.eos_token_ids))

    async def embed(self, prompts: list) -> list:
        async for vectors in self._results(lambda: iter([embed_prompts(self.model, prompts)])):
            return vectors
