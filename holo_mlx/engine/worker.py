"""The one object that owns the model: all MLX work runs on a dedicated thread.

The event loop only enqueues work and awaits results, so it never blocks on MLX. Generations and
embeddings go to the scheduler, which this thread steps while it has work. When a consumer goes
away (client disconnect, error) its sequence or embedding is cancelled and stops at the next step.
The waiting queue is bounded: beyond it, new work is refused at once.

It knows nothing of HTTP: it raises QueueFull and NotReady, and the server answers them.

Under mlx.launch every rank builds an Engine: rank 0's serves, the others `follow()` it, stepping
their schedulers in lockstep with rank 0's (engine/sync.py) over their share of the model. A rank
lost once joined (liveness.py) ends the engine's service for good: the group can run no pass
without it, and the engine thread may be stuck inside a collective. Every request then fails with
the reason, at once.
"""

import asyncio
import logging
import os
import queue
import signal
import threading
from collections import deque
from collections.abc import Awaitable, Callable

from .. import load
from ..distributed import Rank, RanksMissing, ranks, same_everywhere, world
from ..liveness import BEAT_S, Heartbeat
from ..runtime import device_name, release_freed_memory
from ..settings import ServerConfig
from .caches import PrefixCache, VisionCache
from .embedding import EmbeddingJob
from .requests import EmbeddingTask, Sequence
from .sampling import SamplingParams
from .scheduler import Scheduler
from .sync import Lockstep

log = logging.getLogger("holo_mlx.engine")
_DONE = None  # what a sequence emits after its last chunk
DISCONNECT_POLL_S = 0.5  # how often a waiting embeddings request checks whether its client left


def stop_self(reason: str) -> None:
    """Stop this rank as its own SIGTERM does (rank 0: uvicorn drains; another rank: serve.follow asks
    rank 0 to stop them all)."""
    log.warning("stopping: %s", reason)
    os.kill(os.getpid(), signal.SIGTERM)


class QueueFull(Exception):
    """The waiting queue is full: retrying shortly may find room."""

    def __init__(self, waiting: int):
        super().__init__(f"{waiting} requests already waiting")
        self.waiting = waiting


class NotReady(Exception):
    """Why the engine takes no work: the model is still loading (status "loading"), or it cannot
    serve (status "error": the model failed to load, code "model_load_failed", or a rank is missing,
    "rank_lost"); `message` says so to a client."""

    def __init__(self, status: str, message: str, code: str):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


LOADING = NotReady("loading", "the model is still loading; retry shortly", "model_loading")


def rank_lost(what: str, reason: str) -> NotReady:
    """The group of ranks cannot serve any more: `what` befell it, and why."""
    return NotReady("error", f"{what}, so it cannot answer until it is restarted: {reason}", "rank_lost")


def load_failed(error: Exception) -> NotReady:
    if isinstance(error, RanksMissing):
        return rank_lost("a rank of this server is missing", str(error))
    return NotReady("error", f"the model failed to load: {type(error).__name__}: {error}", "model_load_failed")


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
        self.failure: NotReady | None = None  # why it cannot serve, for good
        self.model = self.prompts = self.scheduler = None
        self.ranks: list[Rank] | None = None  # the processes holding the model, once loaded
        self.heartbeat: Heartbeat | None = None
        self._inbox: queue.Queue = queue.Queue()
        self._admission = threading.Lock()  # work is queued, or everything failed, never both at once
        self._outbox: deque[tuple[asyncio.AbstractEventLoop, asyncio.Queue, object]] = deque()
        self._thread = threading.Thread(target=self._serve, name="mlx-engine", daemon=True)

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()  # the other ranks leave now: no loss to report
        self._inbox.put(_DONE)
        self._thread.join(timeout=10)

    @property
    def status(self) -> str:
        return self.failure.status if self.failure is not None else "ready" if self.scheduler else "loading"

    def _load(self) -> bool:
        """Join the other ranks, load this rank's share of the model and make the scheduler; False
        (and status "error") on failure."""
        config = self.config
        try:
            group = world(config.join_timeout)
            if group is not None:
                self.heartbeat = Heartbeat(group, config.rank_timeout, self._lose_rank, stop_self)
            same_everywhere(config, group)
            self.model, self.prompts = load(config.model, group, config.pipeline, **config.resize)
            self.ranks = ranks(self.model, group)
            scheduler = Scheduler(self.model, self.prompts.tokenizer, max_num_seqs=config.max_num_seqs,
                                  prefix_cache=self.prefix_cache, vision_cache=self.vision_cache,
                                  sync=Lockstep(group, self.heartbeat) if group is not None else None)
        except Exception as error:
            log.error("could not load %s: %s", config.model, error)
            self._fail(load_failed(error))
            return False
        with self._admission:
            if self.failure is None:  # no rank was lost meanwhile
                self.scheduler = scheduler
                log.info("model %s ready on %s (%s)", config.model, device_name(), self.dtype)
        return self.failure is None

    def _lose_rank(self, reason: str) -> None:
        """The heartbeat's word that a rank is gone: the group can run no pass any more."""
        self._fail(rank_lost("a rank of this server is lost", reason))

    def _fail(self, failure: NotReady) -> None:
        """Serve no more: refuse new work, and fail all work taken (from any thread: the engine
        thread may never come back from the collective it waits in)."""
        with self._admission:
            if self.failure is not None:
                return
            self.failure = failure
            taken = [item for item in self._inbox.queue if item is not _DONE]
        if self.scheduler is not None:
            taken += self.scheduler.outstanding()
        for work in taken:
            work.emit(failure)
        self._deliver()

    def follow(self) -> None:
        """A rank other than 0: step in lockstep with rank 0's engine until it stops."""
        if not self._load():
            raise SystemExit(f"error: {self.failure.message}")
        lockstep = self.scheduler.sync
        while not lockstep.stopped and self.failure is None:
            try:
                self.scheduler.step()
            except Exception:  # rank 0 did not fail here: this rank is out of step
                log.exception("rank %d: engine step failed", lockstep.group.rank())
                raise

    def _serve(self) -> None:
        if not self._load():
            return
        worked = False
        while self.failure is None:
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
                    if self.failure is None:
                        self.scheduler.sync.exchange(self.scheduler, stop=True)
                    return
                if isinstance(item, EmbeddingTask):
                    self.scheduler.add_embedding(item)
                else:
                    self.scheduler.add(item)
                block, worked = False, True
            if self.scheduler.has_work():
                try:
                    self.scheduler.step()
                except Exception as error:
                    self._step_failed(error)
            self._deliver()

    def _step_failed(self, error: Exception) -> None:
        """A scheduler bug fails the requests in flight, not the server. Over several ranks it ends the
        service: they no longer agree on the passes. Most often a rank is gone, which the heartbeat
        names within a beat or two."""
        if not self.scheduler.sync.shared:
            log.exception("engine step failed")
            self.scheduler.fail_all(error)
        elif self.heartbeat is None or not self.heartbeat.lost.wait(2 * BEAT_S):
            log.exception("engine step failed")
            self._fail(rank_lost("the ranks of this server fell out of step", f"{type(error).__name__}: {error}"))

    def _deliver(self) -> None:
        """Hand this iteration's results to their event loops, one wake-up per loop instead of one
        per token: with many streams the loop otherwise spends its time waking up."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        while self._outbox:  # popleft is atomic: a failure may be delivered from another thread
            loop, results, item = self._outbox.popleft()
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
        return sum(not (isinstance(item, (Sequence, EmbeddingTask)) and item.cancelled.is_set()) for item in queued)

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
        if (why := self.failure or (LOADING if self.scheduler is None else None)) is not None:
            raise NotReady(why.status, why.message, why.code)  # a new one: each raise grows its traceback

    # --- work --------------------------------------------------------------------------------------

    def _enqueue(self, work: Sequence | EmbeddingTask) -> None:
        """Queue work for the engine thread; QueueFull at once when the waiting queue is full."""
        with self._admission:
            self.require_ready()
            if (waiting := self.waiting) >= self.config.max_queue:
                raise QueueFull(waiting)
            self._inbox.put(work)

    def _results(self) -> tuple[asyncio.Queue, Callable[[object], None]]:
        """A request's result queue, and the engine-thread function that posts to it."""
        loop, results = asyncio.get_running_loop(), asyncio.Queue()
        return results, lambda item: self._outbox.append((loop, results, item))

    def generate(self, prompt, params: SamplingParams) -> Generation:
        """Queue one generation; QueueFull at once when the waiting queue is full."""
        results, emit = self._results()
        sequence = Sequence(prompt, params, emit)
        self._enqueue(sequence)
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
        results, emit = self._results()
        job = EmbeddingTask(EmbeddingJob(self.model, prompts, self.config.embedding_chunk), emit)
        self._enqueue(job)
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
