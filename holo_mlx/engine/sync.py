"""What a scheduler shares with other ranks each step: nothing when it runs alone (`Solo`), or,
under mlx.launch, rank 0's decisions (`Lockstep`). The scheduler and the worker use the same members of
either: `leader`, `shared`, `stopped`, `exchange`, `share_tokens`, `note_reset`.

Several ranks serving one model (mlx.launch): every rank steps its own scheduler, in lockstep.

Rank 0 takes the requests. At the start of each step it tells the other ranks, with
mx.distributed collectives, what changed since the last one: new generations (prompt tokens,
image pixels, sampling settings) and embedding jobs, which requests were cancelled or ended, its
newcomer, and a failure that emptied its batch. Each rank then makes the same batch and runs the
same pass, its share of the collectives inside. Rank 0 alone chooses the tokens (its grammars,
penalties and seeds stay with it) and all-sums them into every rank's graph, still lazy, so the
next pass never waits on the host for them; only rank 0 hands results out.

While rank 0 is idle it runs no step, so no exchange: the other ranks wait for its step byte on the
heartbeat connection (liveness.py) before each exchange rather than spin in the collective.

The news travels as mlx-lm's distributed server shares its requests: a pickled message, its length
all-summed, then its bytes (zeros from the other ranks). Both run on the default stream, after the
step in flight, so every rank issues its collectives in the same order.
"""

import dataclasses
import logging
import pickle

import mlx.core as mx

from .embedding import EmbeddingJob
from .requests import EmbeddingTask, Sequence

log = logging.getLogger("holo_mlx.engine")


def _ignore(_item) -> None:
    """A request's results on the ranks other than 0: nobody to give them to."""


class Solo:
    """One process: it decides everything itself and shares nothing."""

    leader = True  # chooses the tokens and answers the requests
    shared = False  # no other rank runs the same passes
    stopped = False

    def exchange(self, scheduler, stop: bool = False) -> None:
        pass

    def share_tokens(self, tokens: mx.array, logits: mx.array) -> mx.array:
        return tokens

    def note_reset(self, everything: bool) -> None:
        pass


class Lockstep:
    shared = True

    def __init__(self, group: mx.distributed.Group, heartbeat=None):
        self.group, self.heartbeat = group, heartbeat  # no heartbeat: the other ranks wait in the collective
        self.leader = group.rank() == 0
        self.stopped = False
        self.numbers: dict = {}  # rank 0: request -> its number; other ranks: number -> request
        self.next_number = 0
        self.reset_level = 0  # since the last exchange: 1 the batch was emptied, 2 the queue too

    # --- both sides --------------------------------------------------------------------------------

    def exchange(self, scheduler, stop: bool = False) -> None:
        """Rank 0 sends what changed; every other rank applies it to its scheduler (or stops)."""
        if self.leader:
            if self.heartbeat is not None:
                self.heartbeat.announce_step()
            self._share(pickle.dumps(self._news(scheduler, stop)))
        elif self.heartbeat is not None and not self.heartbeat.await_step():
            self.stopped = True  # rank 0 is lost (the heartbeat reported it)
        else:
            self._apply(pickle.loads(self._share(None)), scheduler)

    def share_tokens(self, tokens: mx.array | None, logits: mx.array) -> mx.array:
        """Rank 0's chosen tokens on every rank (lazy: an all-sum with zeros from the others). The
        zeros wait for the logits, as rank 0's tokens do: every rank then runs the pass's collectives
        and this one in the same order."""
        own = tokens.astype(mx.uint32) if tokens is not None else \
            mx.depends(mx.zeros((logits.shape[0],), dtype=mx.uint32), logits)
        return mx.distributed.all_sum(own, group=self.group)

    def note_reset(self, everything: bool) -> None:
        self.reset_level = max(self.reset_level, 2 if everything else 1)

    def _share(self, data: bytes | None) -> bytes:
        size = mx.distributed.all_sum(mx.array(len(data) if data is not None else 0), group=self.group).item()
        own = mx.array(memoryview(data), dtype=mx.uint8) if data is not None else mx.zeros((size,), dtype=mx.uint8)
        return bytes(memoryview(mx.distributed.all_sum(own, group=self.group)))

    # --- rank 0 ------------------------------------------------------------------------------------

    def _number(self, request) -> int:
        self.numbers[request] = self.next_number
        self.next_number += 1
        return self.numbers[request]

    def _news(self, scheduler, stop: bool) -> dict:
        if self.reset_level == 2:
            self.numbers.clear()  # the queue was emptied too: every request ended
        sequences = [(self._number(s), s.prompt, dataclasses.replace(s.params, constraint=None))
                     for s in scheduler.waiting if s not in self.numbers]
        embeddings = [(self._number(e), e.work.prompts, e.work.chunk)
                      for e in scheduler.embeddings if e not in self.numbers]
        dropped = [request for request in self.numbers if request.dropped]
        finished = [request for request in self.numbers if getattr(request, "finished", False)]
        done = [request for request in self.numbers if isinstance(request, EmbeddingTask) and request not in scheduler.embeddings]
        news = {"sequences": sequences, "embeddings": embeddings,
                "dropped": [self.numbers[request] for request in dropped],
                "finished": [self.numbers[request] for request in finished],
                # each end is told once
                "ended": [self.numbers.pop(request) for request in {*dropped, *finished, *done}],
                "prefilling": self.numbers.get(scheduler.prefilling) if scheduler.prefilling is not None else None,
                "reset": self.reset_level, "stop": stop}
        self.reset_level = 0
        return news

    # --- the other ranks ---------------------------------------------------------------------------

    def _apply(self, news: dict, scheduler) -> None:
        if news["stop"]:
            self.stopped = True
            return
        if news["reset"]:
            scheduler.reset(waiting=news["reset"] == 2)
            if news["reset"] == 2:
                self.numbers.clear()
        for number, prompt, params in news["sequences"]:
            self.numbers[number] = Sequence(prompt, params, _ignore)
            scheduler.add(self.numbers[number])
        for number, prompts, chunk in news["embeddings"]:
            self.numbers[number] = EmbeddingTask(EmbeddingJob(scheduler.model, prompts, chunk), _ignore)
            scheduler.add_embedding(self.numbers[number])
        for field in ("dropped", "finished"):
            for number in news[field]:
                setattr(self.numbers[number], field, True)
        for number in news["ended"]:
            del self.numbers[number]
        ours = scheduler.prefilling
        if news["prefilling"] is None and ours is not None:
            scheduler.prefilling = None  # rank 0's grammar refused the newcomer
        elif ours is not None and self.numbers.get(news["prefilling"]) is not ours:
            log.error("rank %d prefills another request than rank 0", self.group.rank())
