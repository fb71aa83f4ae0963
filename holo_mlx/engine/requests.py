"""What the engine takes: a generation (`Sequence`) or an embeddings request, with all its state.

The scheduler steps them, the worker queues them and, under mlx.launch, the lockstep sync
rebuilds them on the other ranks: each imports them from here.
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from .embedding import EmbeddingJob
from .prepare import PreparedPrompt
from .sampling import SamplingParams, TokenChooser
from .stream import TextStream


@dataclass(eq=False)  # identity: two identical requests are still two rows of the batch
class Sequence:
    """One generation request and all of its state."""

    prompt: object  # holo_mlx.prompt.Prompt
    params: SamplingParams
    emit: Callable[[object], None]  # receives GenerationChunks, then None at the end, or an Exception
    cancelled: threading.Event = field(default_factory=threading.Event)
    dropped: bool = False  # cancelled as of this step's start
    cached_tokens: int = 0
    # set when the sequence starts
    prepared: PreparedPrompt | None = None
    chooser: TokenChooser | None = None
    stream: TextStream | None = None
    cache: list | None = None  # its own per-layer caches while it prefills
    prefilled: int = 0  # prompt tokens in its cache
    # Prompt lengths at which a layer that cannot be trimmed had its state kept for the prefix
    # cache (models/cache.py): length -> one snapshot per layer (None for trimmable layers).
    snapshots: dict[int, list] = field(default_factory=dict)
    generated: int = 0  # tokens sampled so far, read or still in flight
    finished: bool = False

    @property
    def live(self) -> bool:
        return not (self.finished or self.dropped)


@dataclass(eq=False)
class EmbeddingTask:
    """One embeddings request: its work units, then its vectors (or its error) emitted at the end."""

    work: EmbeddingJob
    emit: Callable[[object], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    dropped: bool = False  # cancelled as of this step's start

    def step(self) -> bool:
        """Run the next work unit; True once the request has ended (done, failed or cancelled)."""
        if self.dropped:
            return True
        try:
            if not self.work.step():
                return False
            self.emit(self.work.vectors)
        except Exception as error:  # fails this request only
            self.emit(error)
        return True
