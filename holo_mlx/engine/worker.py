"""The one object that owns the model: all MLX work runs on a dedicated thread.

The event loop only enqueues work and awaits results, so it never blocks on MLX. Generations and
embeddings go to the scheduler, which this thread steps while it has work. When a consumer goes
away (client disconnect, error) its sequence or embedding is cancelled and stops at the next step.
The waiting queue is bounded: beyond it, new work is refused at once.

It knows nothing of HTTP: it raises QueueFull and NotReady, and the server answers them.

Under mlx.launch every rank builds an Engine: rank 0's serves, the others `follow()` it, stepping
their schedulers in lockstep with rank 0's (lockstep.py) over their share of the model.
"""

import asyncio
import logging
import queue
import threading
from collections.abc import Awaitable, Callable

from .. import load
from ..distributed import Rank, ranks, same_everywhere, world
from ..embed import EmbeddingJob
from ..runtime import device_name, release_freed_memory
from ..settings import ServerConfig
from .caches import PrefixCache, VisionCache
from .lockstep import Lockstep
from .sampling import SamplingParams
from .scheduler import Embedding, Scheduler, Sequence

log = logging.getLogger("holo_mlx.engine")
_DONE = None  # what a sequence emits after its last chunk
DISCONNECT_POLL_S = 0.5  # how often a waiting embeddings request checks whether its client left


class QueueFull(Exception):
    """The waiting queue is full: retrying shortly may find room."""

    def __init__(self, waiting: int):
        super().__init__(f"{waiting} requests already waiting")
        self.waiting = waiting


class NotReady(Exception):
    """The model is still loading (status "loading") or failed to (status "error", with load_error)."""

    def __init__(self, status: str, load_error: str | None):
        super().__init__(f"the model is not ready: {status}")
        self.status, self.load_error = status, load_error


class Generation:
    """Async iterator over one request's GenerationChunks; cancels the sequence when abandoned.
    An error met mid-answer (a grammar's SchemaError, a failed step) is raised as it came."""

    def __init__(self, sequence: Sequence, results: asyncio.Queue):
        self.sequence, self.results = sequence, results
        self.finished = False

    @property
    def cached_tokens(self) -> int:
        return self.sequence.cached_tokens

    def cancel(self) -> None:
        """Stop the sequence at the engine's next step (no-op once it has finished)."""
        self.sequence.cancelled.set()

    async def __aiter__(self):
        try:
            while (item := await self.results.get()) is not _DONE:
                if isinstance(item, Exception):
                    raise item
                yield item
            self.finished = True
        finally:
            self.cancel()


def _put_all(items: list[tuple[asyncio.Queue, object]]) -> None:
    for results, item in items:
        results.put_nowait(item)


class Engine:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.prefix_cache = PrefixCache(config.prefix_cache_bytes)
        self.vision_cache = VisionCache(config.vision_cache_bytes)
        self.status, self.load_error = "loading", None
        self.model = self.prompts = self.scheduler = None
        self.ranks: list[Rank] | None = None  # the processes holding the model, once loaded
        self._inbox: queue.Queue = queue.Queue()
        self._outbox: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue, object]] = []
        self._thread = threading.Thread(target=self._serve, name="mlx-engine", daemon=True)

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._inbox.put(_DONE)
        self._thread.join(timeout=10)

    def _load(self) -> bool:
        """Load this rank's share of the model and make the scheduler; False (and status "error") on failure."""
        config, group = self.config, world()
        try:
            same_everywhere(config, group)
            self.model, self.prompts = load(config.model, group, config.pipeline, **config.resize)
            self.ranks = ranks(self.model, group)
            self.scheduler = Scheduler(self.model, self.prompts.tokenizer, max_num_seqs=config.max_num_seqs,
                                       prefix_cache=self.prefix_cache, vision_cache=self.vision_cache,
                                       lockstep=Lockstep(group) if group is not None else None)
            self.status = "ready"
            log.info("model %s ready on %s (%s)", config.model, device_name(), self.dtype)
            return True
        except Exception as error:
            self.status, self.load_error = "error", f"{type(error).__name__}: {error}"
            log.error("could not load %s: %s", config.model, self.load_error)
            return False

    def follow(self) -> None:
        """A rank other than 0: step in lockstep with rank 0's engine until it stops."""
        if not self._load():
            raise SystemExit(f"error: {self.load_error}")
        lockstep = self.scheduler.lockstep
        while not lockstep.stopped:
            try:
                self.scheduler.step()
            except Exception:  # rank 0 did not fail here: this rank is out of step
                log.exception("rank %d: engine step failed", lockstep.group.rank())
                raise

    def _serve(self) -> None:
        if not self._load():
            return
        worked = False
        while True:
            # Block only when idle; otherwise take what has arrived and keep stepping.
            block = not self.scheduler.has_work()
            if block and worked and self._inbox.empty():
                release_freed_memory()  # idle again: give this burst's freed buffers back
                worked = False
            while True:
                try:
                    item = self._inbox.get(block=block)
                except queue.Empty:
                    break
                if item is _DONE:
                    if self.scheduler.lockstep is not None:
                        self.scheduler.lockstep.exchange(self.scheduler, stop=True)
                    return
                if isinstance(item, Embedding):
                    self.scheduler.add_embedding(item)
                else:
                    self.scheduler.add(item)
                block, worked = False, True
            if self.scheduler.has_work():
                try:
                    self.scheduler.step()
                except Exception as error:  # a scheduler bug fails the requests in flight, not the server
                    log.exception("engine step failed")
                    self.scheduler.fail_all(error)
            self._deliver()

    def _deliver(self) -> None:
        """Hand this iteration's results to their event loops, one wake-up per loop instead of one
        per token: with many streams the loop otherwise spends its time waking up."""
        outbox, self._outbox = self._outbox, []
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for loop, results, item in outbox:
            by_loop.setdefault(loop, []).append((results, item))
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_put_all, items)

    # --- facts -------------------------------------------------------------------------------------

    @property
    def dtype(self) -> str | None:
        return str(self.model.dtype).removeprefix("mlx.core.") if self.model is not None else None

    @property
    def max_model_len(self) -> int:
        limit = self.model.config.text_config.max_position_embeddings
        return min(limit, self.config.max_model_len or limit)

    @property
    def eos_token_ids(self) -> set[int]:
        return set(self.model.config.eos_token_id)

    @property
    def waiting(self) -> int:
        """Queued work not yet cancelled (cancelled work lingers until the engine reaches it)."""
        scheduler = self.scheduler
        queued = list(self._inbox.queue) + \
            (list(scheduler.waiting) + list(scheduler.embeddings)[1:] if scheduler else [])
        return sum(not (isinstance(item, (Sequence, Embedding)) and item.cancelled.is_set()) for item in queued)

    @property
    def running(self) -> int:
        """Sequences prefilling or decoding, and the embedding job at work."""
        scheduler = self.scheduler
        if scheduler is None:
            return 0
        embedding = list(scheduler.embeddings)[:1]  # a copy: the engine thread pops it when done
        return sum(not job.cancelled.is_set() for job in embedding) + len(scheduler.running) + \
            (scheduler.prefilling is not None)

    def require_ready(self) -> None:
        if self.status != "ready":
            raise NotReady(self.status, self.load_error)

    # --- work --------------------------------------------------------------------------------------

    def _admit(self) -> None:
        if (waiting := self.waiting) >= self.config.max_queue:
            raise QueueFull(waiting)

    def _results(self) -> tuple[asyncio.Queue, Callable[[object], None]]:
        """A request's result queue, and the engine-thread function that posts to it."""
        loop, results = asyncio.get_running_loop(), asyncio.Queue()
        return results, lambda item: self._outbox.append((loop, results, item))

    def generate(self, prompt, params: SamplingParams) -> Generation:
        """Queue one generation; QueueFull at once when the waiting queue is full."""
        self._admit()
        results, emit = self._results()
        sequence = Sequence(prompt, params, emit)
        self._inbox.put(sequence)
        return Generation(sequence, results)

    def generate_many(self, prompts: list, params: list[SamplingParams]) -> list[Generation]:
        """Queue several generations at once; none stays queued if the queue fills midway."""
        generations = []
        try:
            for prompt, param in zip(prompts, params):
                generations.append(self.generate(prompt, param))
        except QueueFull:
            for generation in generations:
                generation.cancel()
            raise
        return generations

    async def embed(self, prompts: list, client_gone: Callable[[], Awaitable[bool]] | None = None):
        """The prompts' vectors, or None when `client_gone` says so first; either way, and when the
        caller is cancelled, the job stops at its next unit. QueueFull at once when the queue is full."""
        self._admit()
        results, emit = self._results()
        job = Embedding(EmbeddingJob(self.model, prompts, self.config.embedding_chunk), emit)
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
