"""Serving engine: continuous batching with prefix and vision-feature caches (one MLX thread)."""
