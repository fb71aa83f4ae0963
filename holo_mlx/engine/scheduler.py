"""Continuous batching, pipelined: the only place the model runs for requests.

Each step is one decoder pass that advances the prefill of at most one newcomer by one chunk (so a
long screenshot never freezes the batch) and decodes one token for every running request: the
chunk and the batch share one read of the weights. The step is queued (mx.async_eval) before the
host reads the previous step's tokens, detokenizes, checks stop strings and emits them, so the
device works on step N+1 while the host handles step N, as mlx-lm's generate does. A row that
ends at step N was already computed in step N+1; that result is dropped.

A request's per-layer caches (models/cache.py: KV, or a recurrent state) are its own while it
prefills and a row of the shared batch caches once it decodes; its positions, sampler and text
stream stay on its Sequence. The prefix cache stores a prompt's caches when it joins the batch;
for a model whose layers cannot be trimmed, also snapshots at its image and message ends, so that
an agent's next turn resumes where its prompt first differs.

Embedding requests wait in a FIFO: each step first runs one unit of the first (a chunk of a long
input, or a batch of short ones), so a long embedding never holds generation up for more than a
unit.

A cancellation takes effect at a step's start (a snapshot of each request's `cancelled`), and the
rows that ended leave the batch there too: under mlx.launch every rank's scheduler then changes
its batch at the same point, with what rank 0 decided (engine/sync.py).
"""

import time
from collections import deque
from dataclasses import dataclass

import mlx.core as mx

from ..models import VisionLanguageModel
from ..models.base import Span
from ..models.cache import all_trimmable
from ..runtime import prefill_chunk
from .caches import PrefixCache, VisionCache
from .prepare import PreparedPrompt
from .requests import EmbeddingTask, Sequence
from .sampling import Choice, TokenChooser, choose
from .stream import GenerationChunk, TextStream
from .sync import Lockstep, Solo


@dataclass
class Step:
    """A queued step: the sequences it sampled, in row order, and their lazy choices."""

    rows: list[Sequence]
    choice: Choice


@dataclass
class StepStats:
    """Where the scheduler's time goes, summed over steps (the server exports them on /metrics)."""

    steps: int = 0
    host_seconds: float = 0.0  # building the next graph, sampling bookkeeping, detokenizing, emitting
    # Blocked on the device: reading a step's results, and inside async_eval where the backend
    # runs the work on the calling thread (MLX's CPU backend does).
    wait_seconds: float = 0.0


class Scheduler:
    def __init__(self, model: VisionLanguageModel, tokenizer, *, max_num_seqs: int = 8,
                 prefix_cache: PrefixCache | None = None, vision_cache: VisionCache | None = None,
                 sync: Solo | Lockstep | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.sync = sync or Solo()  # under mlx.launch: rank 0's decisions shared with the other ranks
        self.eos_token_ids = set(model.config.eos_token_id)
        self.max_num_seqs = max_num_seqs
        self.prefix_cache = prefix_cache or PrefixCache(0)
        self.vision_cache = vision_cache or VisionCache(0)
        self.waiting: deque[Sequence] = deque()
        self.prefilling: Sequence | None = None
        self.running: list[Sequence] = []
        self.batch_cache: list | None = None  # each layer's batch cache (models/cache.py)
        # A model with layers that cannot be trimmed (recurrent state) resumes a cached prefix only
        # where a snapshot was taken: its prefills stop and snapshot at every boundary.
        self.snapshots_needed = not all_trimmable(model.make_cache())
        self.pending: Step | None = None  # queued, not yet read
        self.embeddings: deque[EmbeddingTask] = deque()  # the first one is at work
        self.stats = StepStats()

    # --- queue -------------------------------------------------------------------------------------

    def add(self, sequence: Sequence) -> None:
        self.waiting.append(sequence)

    def add_embedding(self, embedding: EmbeddingTask) -> None:
        self.embeddings.append(embedding)

    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.running or self.pending or self.embeddings)

    def step(self) -> None:
        if self.sync.leader:
            self._snapshot_cancellations()
        self.sync.exchange(self)
        if self.sync.stopped:  # rank 0 stopped or is lost: it runs this pass's collectives no more
            return
        if self.embeddings and self.embeddings[0].step():
            self.embeddings.popleft()
        started, waited = time.perf_counter(), self.stats.wait_seconds
        self._drop_cancelled()
        try:
            if self.pending is not None:
                self._join(self.pending)
            if self.prefilling is None and self.waiting and len(self.running) < self.max_num_seqs:
                sequence = self.waiting.popleft()
                self._guard(sequence, self._start, sequence)
            self._step()
        except Exception as error:  # a failed pass fails the requests in it, not the engine
            if self.sync.shared:
                raise  # unless the ranks share it: another may wait in a collective the pass never reached
            for sequence in self._in_flight():
                sequence.emit(error)
            self.reset(waiting=False)
        self.stats.host_seconds += time.perf_counter() - started - (self.stats.wait_seconds - waited)

    def fail_all(self, error: Exception) -> None:
        """End every request with `error` and start empty: for a failure outside one request's work."""
        for work in self.outstanding():
            work.emit(error)
        self.reset(waiting=True)

    def outstanding(self) -> list:
        """Every request taken and not ended: waiting, in flight, embeddings."""
        return [*self.waiting, *self._in_flight(), *self.embeddings]

    def reset(self, waiting: bool) -> None:
        """Nothing in flight any more (and, with `waiting`, nothing queued either)."""
        self.prefilling, self.running, self.batch_cache, self.pending = None, [], None, None
        if waiting:
            self.waiting, self.embeddings = deque(), deque()
        self.sync.note_reset(waiting)

    def _snapshot_cancellations(self) -> None:
        """Each request's cancellation as of now: the step acts on this, whenever the client leaves."""
        rows = self.pending.rows if self.pending else []
        for work in [*self.waiting, *filter(None, [self.prefilling]), *self.running, *rows, *self.embeddings]:
            work.dropped = work.cancelled.is_set()

    def _in_flight(self) -> list[Sequence]:
        """Live sequences past the queue, each once (the newcomer may also be a row of the pending step)."""
        rows = self.pending.rows if self.pending else []
        found = {id(s): s for s in [*filter(None, [self.prefilling]), *self.running, *rows] if s.live}
        return list(found.values())

    def _guard(self, sequence: Sequence, work, *args) -> None:
        """Run one request's own work; a failure ends that request only."""
        try:
            work(*args)
        except Exception as error:
            self._fail(sequence, error)

    def _fail(self, sequence: Sequence, error: Exception) -> None:
        if self.prefilling is sequence:
            self.prefilling = None
        sequence.finished = True
        sequence.emit(error)

    def _drop_cancelled(self) -> None:
        """Cancelled requests leave the queue, and every request that ended leaves the batch."""
        self.waiting = deque(s for s in self.waiting if not s.dropped)
        if self.prefilling is not None and self.prefilling.dropped:
            self.prefilling = None
        self._keep_live()

    def _keep_live(self) -> None:
        """Drop the batch rows whose sequence ended or was cancelled."""
        kept = [row for row, s in enumerate(self.running) if s.live]
        if len(kept) == len(self.running):
            return
        if not kept:
            self.running, self.batch_cache = [], None
            return
        for cache in self.batch_cache:
            cache.filter(kept)
        self.running = [self.running[row] for row in kept]

    # --- prefill -----------------------------------------------------------------------------------

    def _start(self, sequence: Sequence) -> None:
        model, params = self.model, sequence.params
        prepared = PreparedPrompt(model, sequence.prompt, self.vision_cache)
        sequence.prepared = prepared
        stop_ids = params.stop_ids(self.eos_token_ids)
        sequence.chooser = TokenChooser(params, stop_ids, model.config.text_config.vocab_size,
                                        sequence.prompt.input_ids)
        sequence.stream = TextStream(self.tokenizer, params, stop_ids, prepared.length)
        reused, entry = self.prefix_cache.lookup(prepared.key, prepared.reusable)
        sequence.cache = entry.restore(reused) if reused else model.make_cache()
        sequence.cached_tokens = sequence.prefilled = reused
        self.prefilling = sequence

    # --- one step -----------------------------------------------------------------------------------

    def _step(self) -> None:
        """Queue the next pass, then hand out the previous one's tokens while the device runs."""
        previous, self.pending = self.pending, None
        finishing, spans = self._spans(previous)
        sampled = finishing + self.running
        if spans:
            self.stats.steps += 1
            hidden = self.model.hidden(spans, last_only=True)
            self._snapshot_boundary()
            states = [c.state for c in self.prefilling.cache] if self.prefilling is not None else []
            if not sampled:  # a prefill chunk alone (its hidden state too: a pipeline stage sends it)
                self._queue(hidden, states)
            elif any(s.chooser.waits() for s in sampled):
                # A grammar's next mask needs the previous token on the host: the pass runs meanwhile.
                logits = self._logits(hidden, finishing)
                self._queue(logits, states)
                if previous is not None:
                    self._hand_out(previous)
                    previous = None
                self.pending = Step(sampled, self._choose(logits, sampled))
                self._queue(self.pending.choice.arrays())
            else:
                self.pending = Step(sampled, self._choose(self._logits(hidden, finishing), sampled))
                self._queue(self.pending.choice.arrays(), states)
        if previous is not None:
            self._hand_out(previous)

    def _queue(self, *arrays) -> None:
        started = time.perf_counter()
        mx.async_eval(*arrays)
        self.stats.wait_seconds += time.perf_counter() - started

    def _spans(self, previous: Step | None) -> tuple[list[Sequence], list[Span]]:
        """The newcomer's next prefill chunk and the running batch's next token as decoder spans,
        and the newcomer when its prompt ends in this chunk."""
        spans, finishing = [], []
        if (sequence := self.prefilling) is not None:
            prepared = sequence.prepared
            start, end = sequence.prefilled, min(sequence.prefilled + prefill_chunk(), prepared.length)
            if self.snapshots_needed:
                end = min([boundary for boundary in prepared.boundaries if boundary > start] + [end])
            spans.append(prepared.span(start, end, sequence.cache))
            sequence.prefilled = end
            if end == prepared.length:
                finishing.append(sequence)
        if self.running:
            axes = self.running[0].prepared.positions.shape[0]
            positions = mx.array([[s.prepared.next_position(s.generated)] for s in self.running])
            embeds = self.model.embed_tokens(self._fed_back(previous)[:, None])
            spans.append(Span(embeds, mx.broadcast_to(positions[None], (axes, len(self.running), 1)), self.batch_cache))
        return finishing, spans

    def _snapshot_boundary(self) -> None:
        """Keep the newcomer's non-trimmable layers as they are after a chunk that ended at a boundary
        (the arrays are immutable: a snapshot is a reference, computed with the pass)."""
        sequence = self.prefilling
        if self.snapshots_needed and sequence is not None and sequence.prefilled in sequence.prepared.boundaries:
            sequence.snapshots[sequence.prefilled] = [None if cache.trimmable else cache.snapshot()
                                                      for cache in sequence.cache]

    def _logits(self, hidden: list[mx.array], finishing: list[Sequence]) -> mx.array:
        """One lm_head pass over the newcomer's last prompt position (when its prompt ends here)
        and the batch's rows, in that order."""
        last = ([hidden[0][:, -1]] if finishing else []) + ([hidden[-1][:, -1]] if self.running else [])
        return self.model.logits(mx.concatenate(last))

    def _fed_back(self, previous: Step) -> mx.array:
        """Each running row's last sampled token, still lazy: one gather from the previous step."""
        index = {id(s): row for row, s in enumerate(previous.rows)}
        rows = [index[id(s)] for s in self.running]
        tokens = previous.choice.tokens
        return tokens if rows == list(range(len(previous.rows))) else tokens[mx.array(rows)]

    def _choose(self, logits: mx.array, sampled: list[Sequence]) -> Choice:
        if not self.sync.leader:  # rank 0 chooses for every rank
            for sequence in sampled:
                sequence.generated += 1
            return Choice(self.sync.share_tokens(None, logits), [])
        masks = []
        for sequence in sampled:  # a row's own failure (its grammar) ends that row only
            mask = None
            if sequence.live:
                try:
                    mask = sequence.chooser.allowed()
                except Exception as error:
                    self._fail(sequence, error)
            masks.append(mask)
            sequence.generated += 1
        choice = choose(logits, [s.chooser for s in sampled], masks)
        choice.tokens = self.sync.share_tokens(choice.tokens, logits)
        return choice

    def _join(self, previous: Step) -> None:
        """A newcomer whose prompt ended in the previous step joins the batch for the next one."""
        sequence = self.prefilling
        if sequence is None or sequence not in previous.rows:
            return
        self.prefilling = None
        self.prefix_cache.store(sequence.prepared.key, sequence.cache, sequence.snapshots)
        rows = [layer.batch_row() for layer in sequence.cache]
        sequence.cache, sequence.snapshots = None, {}
        if self.batch_cache is None:
            self.batch_cache = rows
        else:
            for cache, row in zip(self.batch_cache, rows):
                cache.extend(row)
        self.running.append(sequence)

    # --- handing out ---------------------------------------------------------------------------------

    def _hand_out(self, step: Step) -> None:
        """Read a step's tokens and give each live row its chunk (rows that end leave the batch at the
        next step's start). The other ranks hand out nothing: rank 0 answers the requests."""
        if not self.sync.leader:
            return
        waited = time.perf_counter()
        picks = step.choice.read([s.chooser for s in step.rows])
        self.stats.wait_seconds += time.perf_counter() - waited
        for sequence, (token, logprob) in zip(step.rows, picks):
            if sequence.live:
                self._guard(sequence, self._emit, sequence, token, logprob)

    def _emit(self, sequence: Sequence, token: int, logprob) -> None:
        """Hand one token's chunk to the requester; the last one ends the sequence."""
        if sequence.params.constraint is not None:
            sequence.params.constraint.advance(token)
        chunk: GenerationChunk = sequence.stream.add(token, logprob)
        sequence.emit(chunk)
        if chunk.finish_reason:
            sequence.finished = True
            sequence.emit(None)
