"""The one object that owns the model: all MLX work runs on a dedicated thread.

The event loop only enqueues work and awaits results, so it never blocks on MLX. Generations go
to the continuous-batching scheduler; embedding jobs wait in a FIFO, and each engine iteration runs
one unit of the first (a chunk of a long input, or a batch of short ones) and then one scheduler
step, so a long embedding never holds generation up for more than a unit. When a consumer goes
away (client disconnect, error) its sequence or embedding job is cancelled and stops at the next
step or unit. The waiting queue is bounded: beyond it, requests get 429 at once.
"""

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

from .. import load
from ..constrain import Grammars, SchemaError
from ..embed import EmbeddingJob
from .sampling import SamplingParams
from ..runtime import device_name, release_freed_memory
from ..server.common import TokenStrings
from ..server.errors import APIError
from ..server.metrics import Metrics
from .caches import PrefixCache, VisionCache
from .scheduler import Scheduler, Sequence

log = logging.getLogger("holo_mlx.server")
_DONE = None  # what a sequence emits after its last chunk
DISCONNECT_POLL_S = 0.5  # how often a waiting embeddings request checks whether its client left


class Generation:
    """Async iterator over one request's GenerationChunks; cancels the sequence when abandoned."""

    def __init__(self, sequence: Sequence, results: asyncio.Queue, metrics: Metrics):
        self.sequence, self.results, self.metrics = sequence, results, metrics
        self.submitted = time.perf_counter()
        self.finished = False

    @property
    def cached_tokens(self) -> int:
        return self.sequence.cached_tokens

    def cancel(self) -> None:
        """Stop the sequence at the engine's next step (no-op once it has finished)."""
        if self.sequence.cancelled.is_set():
            return
        self.sequence.cancelled.set()
        if not self.finished:
            self.metrics.cancelled.inc()

    async def __aiter__(self):
        last = None
        try:
            while (item := await self.results.get()) is not _DONE:
                if isinstance(item, SchemaError):  # met mid-answer: still the request's own schema
                    raise APIError(400, str(item), code="invalid_json_schema")
                if isinstance(item, Exception):
                    raise item
                now = time.perf_counter()
                if last is None:
                    self.metrics.first_token(now - self.submitted, self.cached_tokens)
                else:
                    self.metrics.next_token(now - last)
                last = now
                yield item
            self.finished = True
        finally:
            self.cancel()


class _EmbedJob:
    """One embeddings request in the engine's FIFO; it emits its vectors or its error at the end."""

    def __init__(self, work: EmbeddingJob, emit: Callable[[object], None]):
        self.work, self.emit = work, emit
        self.cancelled = threading.Event()

    def step(self) -> bool:
        """Run the next work unit; True once the job has ended (done, failed or cancelled)."""
        if self.cancelled.is_set():
            return True
        try:
            if not self.work.step():
                return False
            self.emit(self.work.vectors)
        except Exception as error:  # fails this job only
            self.emit(error)
        return True


class Engine:
    def __init__(self, model_path: str | Path, *, max_side: int | None, max_pixels: int | None,
                 max_model_len: int | None = None, max_num_seqs: int = 8, max_waiting: int = 64,
                 prefix_cache_bytes: int = 1 << 30, vision_cache_bytes: int = 256 << 20,
                 embedding_chunk: int = 512):
        self.model_path = str(model_path)
        self.max_side, self.max_pixels = max_side, max_pixels
        self.requested_max_model_len = max_model_len
        self.max_num_seqs, self.max_waiting = max_num_seqs, max_waiting
        self.embedding_chunk = embedding_chunk
        self.prefix_cache = PrefixCache(prefix_cache_bytes)
        self.vision_cache = VisionCache(vision_cache_bytes)
        self.status, self.load_error = "loading", None
        self.model = self.prompts = self.token_strings = self.scheduler = self.grammars = None
        self.metrics = Metrics(self)
        self._inbox: queue.Queue = queue.Queue()
        self._embeddings: deque[_EmbedJob] = deque()  # the first one is running
        self._thread = threading.Thread(target=self._serve, name="mlx-engine", daemon=True)

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._inbox.put(_DONE)
        self._thread.join(timeout=10)

    def _serve(self) -> None:
        try:
            self.model, self.prompts = load(self.model_path, max_side=self.max_side, max_pixels=self.max_pixels)
            self.token_strings = TokenStrings(self.prompts.tokenizer)
            self.grammars = Grammars(self.prompts.tokenizer, self.model.config.text_config.vocab_size,
                                     self.eos_token_ids)
            self.scheduler = Scheduler(self.model, self.prompts.tokenizer, self.eos_token_ids,
                                       max_num_seqs=self.max_num_seqs, prefix_cache=self.prefix_cache,
                                       vision_cache=self.vision_cache)
            self.status = "ready"
            log.info("model %s ready on %s (%s)", self.model_path, device_name(), self.dtype)
        except Exception as error:
            self.status, self.load_error = "error", f"{type(error).__name__}: {error}"
            log.error("could not load %s: %s", self.model_path, self.load_error)
            return
        worked = False
        while True:
            # Block only when idle; otherwise take what has arrived and keep stepping.
            block = not (self.scheduler.has_work() or self._embeddings)
            if block and worked and self._inbox.empty():
                release_freed_memory()  # idle again: give this burst's freed buffers back
                worked = False
            while True:
                try:
                    item = self._inbox.get(block=block)
                except queue.Empty:
                    break
                if item is _DONE:
                    return
                if isinstance(item, _EmbedJob):
                    self._embeddings.append(item)
                else:
                    self.scheduler.add(item)
                block, worked = False, True
            if self._embeddings and self._embeddings[0].step():
                self._embeddings.popleft()
            if self.scheduler.has_work():
                try:
                    self.scheduler.step()
                except Exception as error:  # a scheduler bug fails the requests in flight, not the server
                    log.exception("engine step failed")
                    self.scheduler.fail_all(error)

    # --- facts -------------------------------------------------------------------------------------

    @property
    def dtype(self) -> str | None:
        return str(self.model.dtype).removeprefix("mlx.core.") if self.model is not None else None

    @property
    def max_model_len(self) -> int:
        limit = self.model.config.text_config.max_position_embeddings
        return min(limit, self.requested_max_model_len or limit)

    @property
    def eos_token_ids(self) -> set[int]:
        return set(self.model.config.eos_token_id)

    @property
    def waiting(self) -> int:
        """Queued work not yet cancelled (cancelled work lingers until the engine reaches it)."""
        queued = list(self._inbox.queue) + list(self._embeddings)[1:] + \
            (list(self.scheduler.waiting) if self.scheduler else [])
        return sum(not (isinstance(item, (Sequence, _EmbedJob)) and item.cancelled.is_set()) for item in queued)

    @property
    def running(self) -> int:
        if self.scheduler is None:
            return 0
        return len(self.scheduler.running) + (self.scheduler.prefilling is not None)

    def require_ready(self) -> None:
        if self.status == "loading":
            raise APIError(503, "the model is still loading; retry shortly", code="model_loading",
                           headers={"Retry-After": "5"})
        if self.status == "error":
            raise APIError(503, f"the model failed to load: {self.load_error}", code="model_load_failed")

    # --- work --------------------------------------------------------------------------------------

    def _admit(self) -> None:
        if self.waiting >= self.max_waiting:
            raise APIError(429, f"server busy: {self.waiting} requests already waiting; retry shortly",
                           code="queue_full", headers={"Retry-After": "1"})

    def _results(self) -> tuple[asyncio.Queue, Callable[[object], None]]:
        loop, results = asyncio.get_running_loop(), asyncio.Queue()
        return results, lambda item: loop.call_soon_threadsafe(results.put_nowait, item)

    def generate(self, prompt, params: SamplingParams) -> Generation:
        """Queue one generation; 429 at once when the waiting queue is full."""
        self._admit()
        results, emit = self._results()
        sequence = Sequence(prompt, params, emit)
        self.metrics.prompt_tokens.inc(len(prompt.input_ids))
        self._inbox.put(sequence)
        return Generation(sequence, results, self.metrics)

    def generate_many(self, prompts: list, params: list[SamplingParams]) -> list[Generation]:
        """Queue several generations at once; none stays queued if the queue fills midway."""
        generations = []
        try:
            for prompt, param in zip(prompts, params):
                generations.append(self.generate(prompt, param))
        except APIError:
            for generation in generations:
                generation.cancel()
            raise
        return generations

    async def embed(self, prompts: list, client_gone: Callable[[], Awaitable[bool]] | None = None):
        """The prompts' vectors, or None when `client_gone` says so first; either way, and when the
        caller is cancelled, the job stops at its next unit. 429 at once when the queue is full."""
        self._admit()
        results, emit = self._results()
        job = _EmbedJob(EmbeddingJob(self.model, prompts, self.embedding_chunk), emit)
        self._inbox.put(job)
        outcome = asyncio.ensure_future(results.get())
        try:
            while not (await asyncio.wait({outcome}, timeout=DISCONNECT_POLL_S))[0]:
                if client_gone is not None and await client_gone():
                    return None
        finally:
            job.cancelled.set()  # no-op once it has ended
            outcome.cancel()
        vectors = outcome.result()
        if isinstance(vectors, Exception):
            raise vectors
        return vectors
