"""Where a model folder is (a local path, or a Hugging Face hub id fetched into its cache) and what
its config.json says: what both loading (loading.py) and the ranks' start-up check (distributed.py)
read before any model is built."""

import json
from pathlib import Path


class LoadError(RuntimeError):
    pass


def resolve_path(path_or_repo: str | Path) -> Path:
    """A local folder, or a hub id fetched with huggingface_hub (config, weights, tokenizer files)."""
    path = Path(path_or_repo)
    if path.is_dir():
        return path
    if path.exists() or str(path_or_repo).startswith((".", "/")) or str(path_or_repo).count("/") != 1:
        raise LoadError(f"{path_or_repo}: not a model folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(
            str(path_or_repo),
            allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt", "tokenizer.model"],
        ))
    except Exception as error:  # offline, unknown repo, gated: the hub's own message says which
        raise LoadError(f"could not fetch {path_or_repo} from the Hugging Face hub: {error}") from None


def read_config(path: Path) -> dict:
    file = path / "config.json"
    if not file.exists():
        raise LoadError(f"{path}: no config.json (convert a checkpoint with `python -m convert`)")
    return json.loads(file.read_text())
