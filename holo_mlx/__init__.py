"""holo-mlx: Hcompany's Holo vision-language models in MLX (families under holo_mlx/models/)."""

from pathlib import Path


def load(path_or_repo: str | Path, group=None, pipeline: bool = False, **prompt_options):
    """(model, prompt builder) for a model folder or hub id; prompt_options: max_side, max_pixels.
    `group`: the mx.distributed ranks to split the decoder across (holo_mlx.distributed.world()),
    by tensor parallelism, or by pipeline parallelism with `pipeline`."""
    from .folders import resolve_path
    from .loading import load_model
    from .models.cache import all_trimmable
    from .prompt import PromptBuilder

    path = resolve_path(path_or_repo)
    model = load_model(path, group, pipeline)
    # A model that resumes cached prompts only at stored boundaries needs to know its messages' ends.
    marks = not all_trimmable(model.make_cache())
    return model, PromptBuilder.from_pretrained(path, mark_message_ends=marks, **prompt_options)


def __getattr__(name: str):
    # MLX, mlx-lm and transformers take seconds to import: only on use, so that light modules
    # (holo_mlx.agent in a client, holo_mlx.coordinates) import at once.
    if name == "load_model":
        from .loading import load_model
        return load_model
    raise AttributeError(f"module 'holo_mlx' has no attribute {name!r}")


__all__ = ["load", "load_model"]
