"""Prometheus metrics for /metrics: traffic, queue, batch, tokens, caches, latency, engine steps, memory."""

import mlx.core as mx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily

from ..engine.scheduler import StepStats
from ..engine.worker import Engine

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """One registry per app, so several servers in one process (tests) never collide. The gauges and
    the step counters are read from the engine when /metrics is rendered."""

    def __init__(self, engine: Engine):
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # process_resident_memory_bytes and friends
        registry.register(StepCounters(engine))
        self.requests = Counter("holo_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=registry)
        self.prompt_tokens = Counter("holo_prompt_tokens", "prompt tokens submitted for generation",
                                     registry=registry)
        self.cached_prompt_tokens = Counter("holo_cached_prompt_tokens", "prompt tokens served from the prefix cache",
                                            registry=registry)
        self.generation_tokens = Counter("holo_generation_tokens", "tokens generated", registry=registry)
        self.cancelled = Counter("holo_cancelled_requests", "generations abandoned by their client before the end",
                                 registry=registry)
        self.ttft = Histogram("holo_time_to_first_token_seconds", "submission to first token",
                              buckets=LATENCY_BUCKETS, registry=registry)
        self.itl = Histogram("holo_inter_token_latency_seconds", "time between a request's tokens",
                             buckets=LATENCY_BUCKETS, registry=registry)
        gauges = {
            "holo_queue_depth": ("requests waiting for a batch slot", lambda: engine.waiting),
            "holo_running_sequences": ("sequences prefilling or decoding, and the embedding job at work",
                                       lambda: engine.running),
            "holo_kv_cache_bytes": ("KV cache bytes of the running batch", lambda: _batch_kv_bytes(engine)),
            "holo_prefix_cache_bytes": ("bytes held by the prefix cache", lambda: engine.prefix_cache.bytes),
            "holo_vision_cache_bytes": ("bytes held by the vision-feature cache", lambda: engine.vision_cache.bytes),
            "holo_prefix_cache_hit_ratio": ("prefix-cache lookups that reused KV", lambda: _ratio(engine.prefix_cache)),
            "holo_vision_cache_hit_ratio": ("images whose features were reused", lambda: _ratio(engine.vision_cache)),
            "holo_mlx_active_memory_bytes": ("MLX active memory", mx.get_active_memory),
        }
        for name, (doc, read) in gauges.items():
            Gauge(name, doc, registry=registry).set_function(read)

    def first_token(self, seconds: float, cached_tokens: int) -> None:
        self.ttft.observe(seconds)
        self.cached_prompt_tokens.inc(cached_tokens)
        self.generation_tokens.inc()

    def next_token(self, seconds: float) -> None:
        self.itl.observe(seconds)
        self.generation_tokens.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StepCounters:
    """The scheduler's own step timing (Scheduler.stats), as counters; 0 until the model is ready."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def collect(self):
        scheduler = self.engine.scheduler
        stats = scheduler.stats if scheduler is not None else StepStats()
        yield CounterMetricFamily("holo_engine_steps", "scheduler steps run", value=stats.steps)
        yield CounterMetricFamily("holo_engine_step_host_seconds", "step time on the host: building the graph, "
                                  "sampling bookkeeping, detokenizing, emitting", value=stats.host_seconds)
        yield CounterMetricFamily("holo_engine_step_wait_seconds", "step time blocked on the device for results",
                                  value=stats.wait_seconds)


def _ratio(cache) -> float:
    lookups = cache.hits + cache.misses
    return cache.hits / lookups if lookups else 0.0


def _batch_kv_bytes(engine: Engine) -> int:
    scheduler = engine.scheduler
    if scheduler is None or scheduler.batch_cache is None:
        return 0
    return sum(cache.nbytes for cache in scheduler.batch_cache)
