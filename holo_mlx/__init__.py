"""holo-mlx: Holo1.5 (Qwen2.5-VL) in MLX."""

from pathlib import Path

from .loading import load_model, resolve_path
from .model import Model


def load(path_or_repo: str | Path, **prompt_options):
    """(model, prompt builder) for a model folder or hub id; prompt_options: max_side, max_pixels."""
    from .prompt import PromptBuilder

    path = resolve_path(path_or_repo)
    return load_model(path), PromptBuilder.from_pretrained(path, **prompt_options)


__all__ = ["Model", "load", "load_model"]
