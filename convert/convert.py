"""Hugging Face Holo1.5 / Qwen2.5-VL checkpoint -> MLX folder that both holo-mlx and mlx-vlm load.

Shards are streamed one at a time (`mx.load` is lazy, each tensor is read, converted and dropped),
so peak memory is one output shard (<= 5 GB) rather than the model: a 72B checkpoint converts on
a machine with less RAM than the model. Everything is written into a hidden folder next to the
destination and renamed into place at the end, so a failure or Ctrl-C leaves no half model.
"""

import json
import math
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten
from tqdm import tqdm

from holo_mlx.models import ConfigError, Family, family_for

DEFAULT_HF_PATH = "Hcompany/Holo1.5-7B"
DTYPES = ("float16", "bfloat16", "float32")
Q_BITS = (4, 8)
Q_GROUP_SIZES = (32, 64, 128)
MAX_SHARD_BYTES = 5 << 30  # mlx-lm's and mlx-vlm's shard size
LM_HEAD = "language_model.lm_head.weight"

# Tokenizer, chat template and processor files an MLX folder needs besides weights and config.
SIDE_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
    "special_tokens_map.json", "added_tokens.json",
    "chat_template.json", "chat_template.jinja",
    "preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json",
    "generation_config.json",
)
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "merges.txt", "vocab.json", "tokenizer*"]


class ConversionError(Exception):
    """A problem with the input or destination, worded as one line for the command line."""


def convert(
    hf_path: str = DEFAULT_HF_PATH,
    mlx_path: str | Path | None = None,
    dtype: str | None = None,
    quantize: bool = False,
    q_bits: int = 4,
    q_group_size: int = 64,
    quantize_vision: bool = False,
    force: bool = False,
) -> Path:
    """Convert `hf_path` (hub id or local folder) and return the written MLX folder."""
    if dtype is not None and dtype not in DTYPES:
        raise ConversionError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if quantize and (q_bits not in Q_BITS or q_group_size not in Q_GROUP_SIZES):
        raise ConversionError(f"quantization supports bits {Q_BITS} and group sizes {Q_GROUP_SIZES}")
    destination = Path(mlx_path) if mlx_path else default_mlx_path(hf_path, quantize, q_bits)
    if destination.exists() and not force:
        raise ConversionError(f"{destination} already exists; pass --force to overwrite it")

    source = fetch(hf_path)
    raw_config, family, config = read_config(source)
    if "quantization" in raw_config or "quantization_config" in raw_config:
        raise ConversionError(f"{source} is already quantized; convert from a float checkpoint")
    dtype = dtype or checkpoint_dtype(raw_config)
    plan = plan_tensors(weight_files(source), family, config)
    quantization = {"group_size": q_group_size, "bits": q_bits, "mode": "affine"} if quantize else None

    with staging(destination) as folder:
        write_weights(folder, plan, family, getattr(mx, dtype), quantization, quantize_vision)
        write_config(folder, family.mlx_config(raw_config, config), dtype, quantization)
        for name in SIDE_FILES:
            if (source / name).exists():
                shutil.copyfile(source / name, folder / name)  # follows the hub cache's symlinks
    return destination


def default_mlx_path(hf_path: str, quantize: bool, q_bits: int) -> Path:
    name = Path(hf_path.rstrip("/")).name
    return Path("models") / (f"{name}-mlx-{q_bits}bit" if quantize else f"{name}-mlx")


def fetch(hf_path: str) -> Path:
    """A local folder as is; otherwise the needed files of a hub repo, via the local HF cache."""
    local = Path(hf_path).expanduser()
    if local.is_dir():
        return local
    if local.exists() or hf_path.startswith((".", "/", "~")):
        raise ConversionError(f"{hf_path} is not a folder")

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(hf_path, allow_patterns=HUB_PATTERNS))
    except HFValidationError:
        raise ConversionError(f"{hf_path} is neither a local folder nor a Hugging Face repo id") from None
    except RepositoryNotFoundError:
        raise ConversionError(f"no repo {hf_path} on the Hugging Face Hub (or it is private/gated)") from None
    except LocalEntryNotFoundError:
        raise ConversionError(
            f"{hf_path} is not a local folder, and the Hugging Face Hub is unreachable (offline?) "
            "with no cached copy"
        ) from None
    except OSError as error:  # other HTTP and file-system errors
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConversionError(f"cannot download {hf_path}: {first_line}") from None


def read_config(folder: Path) -> tuple[dict, Family, object]:
    """The raw config.json, its family and the family's config of it."""
    path = folder / "config.json"
    if not path.exists():
        raise ConversionError(f"{folder} has no config.json")
    try:
        raw = json.loads(path.read_text())
        family = family_for(raw)
        return raw, family, family.config(raw)
    except (json.JSONDecodeError, ConfigError) as error:
        raise ConversionError(f"{path}: {error}") from None


def checkpoint_dtype(raw: dict) -> str:
    """The checkpoint's own float type (transformers 4.x: torch_dtype, 5: dtype), else bfloat16."""
    text = raw.get("text_config") or {}
    stored = raw.get("torch_dtype") or raw.get("dtype") or text.get("dtype")
    return stored if stored in DTYPES else "bfloat16"


def weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConversionError(f"{folder} has no *.safetensors weights")
    return files


def read_shard(file: Path, family: Family) -> dict[str, mx.array]:
    """mlx-vlm-named tensors of one shard; lazy, so nothing is read from disk yet."""
    try:
        return family.sanitize(mx.load(str(file)))
    except (RuntimeError, ValueError) as error:  # not a safetensors file, truncated header
        raise ConversionError(f"cannot read {file}: {error}") from None
    except KeyError as error:
        raise ConversionError(f"{file}: {error.args[0]}") from None


def expected_shapes(family: Family, config) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of the holo-mlx model (never evaluated, so nothing is allocated)."""
    return {name: tuple(value.shape) for name, value in tree_flatten(family.model(config).parameters())}


def plan_tensors(files: list[Path], family: Family, config) -> list[tuple[Path, list[str]]]:
    """Which tensors to take from each shard; fails before anything is written if the set is wrong."""
    expected = expected_shapes(family, config)
    plan, seen = [], {}
    for file in files:
        shapes = {name: tuple(value.shape) for name, value in read_shard(file, family).items()}
        # A tied checkpoint may still store lm_head; it duplicates embed_tokens, which the model uses.
        if config.text_config.tie_word_embeddings and LM_HEAD not in expected:
            shapes.pop(LM_HEAD, None)
        for name in shapes:
            if name in seen:
                raise ConversionError(f"tensor {name} is stored twice ({seen[name].name} and {file.name})")
            seen[name] = file
        plan.append((file, sorted(shapes)))
        for name, shape in shapes.items():
            if name in expected and shape != expected[name]:
                raise ConversionError(
                    f"tensor {name} has shape {shape} but config.json implies {expected[name]}"
                )
    missing = sorted(set(expected) - set(seen))
    if missing:
        raise ConversionError(f"checkpoint is missing tensor {missing[0]}{_more(missing)}")
    unknown = sorted(set(seen) - set(expected))
    if unknown:
        raise ConversionError(f"checkpoint has unexpected tensor {unknown[0]}{_more(unknown)}")
    return plan


def _more(names: list[str]) -> str:
    return f" (and {len(names) - 1} more)" if len(names) > 1 else ""


def quantizable(family: Family, name: str, shape: tuple[int, ...], group_size: int, quantize_vision: bool) -> bool:
    """Whether a tensor becomes a quantized Linear / Embedding / SwitchLinear weight: a `.weight`
    (its scales and biases are stored under its module's name) that the family lets be quantized.
    mlx-vlm's loader only quantizes modules whose weight size is a multiple of 64, so anything else
    stays in float to load there too."""
    if not name.endswith(".weight") or not family.quantizable(name, shape, quantize_vision):
        return False
    return shape[-1] % group_size == 0 and math.prod(shape) % 64 == 0


def convert_tensor(
    name: str, value: mx.array, family: Family, dtype: mx.Dtype, quantization: dict | None, quantize_vision: bool
) -> dict[str, mx.array]:
    """The output tensors for one checkpoint tensor: cast, and quantized where eligible."""
    if not mx.issubdtype(value.dtype, mx.floating):  # every parameter of these families is a float
        raise ConversionError(f"tensor {name} is {value.dtype}, expected a floating-point weight")
    value = value.astype(mx.float32 if name.endswith(family.float32_weights) else dtype)
    if quantization is None or not quantizable(family, name, value.shape, quantization["group_size"], quantize_vision):
        return {name: value}
    weight, scales, biases = mx.quantize(
        value, group_size=quantization["group_size"], bits=quantization["bits"]
    )
    module = name.removesuffix(".weight")
    return {name: weight, f"{module}.scales": scales, f"{module}.biases": biases}


class ShardWriter:
    """Collects converted tensors into <= MAX_SHARD_BYTES safetensors files plus the index."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.pending: dict[str, mx.array] = {}
        self.pending_size = 0
        self.shards: list[list[str]] = []
        self.apart: dict[str, str] = {}  # tensor name -> file, for add_apart's files
        self.total_size = 0

    def add(self, tensors: dict[str, mx.array]) -> None:
        size = sum(value.nbytes for value in tensors.values())
        if self.pending and self.pending_size + size > MAX_SHARD_BYTES:
            self.flush()
        self.pending.update(tensors)
        self.pending_size += size
        self.total_size += size

    def flush(self) -> None:
        # The final count is unknown until the end, so shards get their -of-N names in finish().
        mx.save_safetensors(str(self._path(len(self.shards))), self.pending, metadata={"format": "mlx"})
        self.shards.append(list(self.pending))
        self.pending, self.pending_size = {}, 0

    def add_apart(self, name: str, tensors: dict[str, mx.array]) -> None:
        """A file of tensors in the published checkpoint's conventions (metadata "pt", as mlx-vlm's
        split_mtp reads a draft head), outside the numbered shards."""
        mx.save_safetensors(str(self.folder / name), tensors, metadata={"format": "pt"})
        self.apart.update(dict.fromkeys(tensors, name))
        self.total_size += sum(value.nbytes for value in tensors.values())

    def finish(self) -> None:
        if self.pending:
            self.flush()
        count, weight_map = len(self.shards), dict(self.apart)
        for index, names in enumerate(self.shards):
            final = f"model-{index + 1:05d}-of-{count:05d}.safetensors"
            self._path(index).rename(self.folder / final)
            weight_map.update(dict.fromkeys(names, final))
        index_data = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(index_data, indent=2))

    def _path(self, index: int) -> Path:
        return self.folder / f"model-{index + 1:05d}.partial.safetensors"


def write_weights(
    folder: Path,
    plan: list[tuple[Path, list[str]]],
    family: Family,
    dtype: mx.Dtype,
    quantization: dict | None,
    quantize_vision: bool,
) -> None:
    writer = ShardWriter(folder)
    with tqdm(total=sum(len(names) for _, names in plan), unit="tensor", desc="Converting") as progress:
        for file, names in plan:
            tensors = read_shard(file, family)
            for name in names:
                # pop: once evaluated the source tensor is no longer referenced, so it is freed.
                converted = convert_tensor(name, tensors.pop(name), family, dtype, quantization, quantize_vision)
                try:
                    mx.eval(*converted.values())
                except RuntimeError as error:  # e.g. the file changed on disk since it was planned
                    raise ConversionError(f"cannot convert {name} from {file}: {error}") from None
                writer.add(converted)
                progress.update()
    for prefix in family.unrun_prefixes:
        unrun = {}
        for file, _ in plan:
            tensors = mx.load(str(file))
            unrun.update({key: tensors[key].astype(dtype) for key in tensors if key.startswith(prefix)})
        if unrun:
            writer.add_apart(f"{prefix.rstrip('.')}.safetensors", unrun)
    writer.finish()


def write_config(folder: Path, out: dict, dtype: str, quantization: dict | None) -> None:
    out["torch_dtype"] = dtype
    if quantization:
        # mlx-vlm writes both; mlx-lm and mlx-vlm loaders read "quantization".
        out["quantization"] = dict(quantization)
        out["quantization_config"] = dict(quantization)
    (folder / "config.json").write_text(json.dumps(out, indent=2, sort_keys=True))


@contextmanager
def staging(destination: Path):
    """A hidden sibling folder (same file system) that replaces `destination` only on success."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    folder = destination.parent / f".{destination.name}.{uuid.uuid4().hex[:8]}.partial"
    folder.mkdir()
    try:
        yield folder
        if destination.exists():  # --force: move the old one aside so the swap is two renames
            old = folder.with_suffix(".old")
            destination.rename(old)
            folder.rename(destination)
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
        else:
            folder.rename(destination)
    except BaseException:  # KeyboardInterrupt included
        shutil.rmtree(folder, ignore_errors=True)
        raise
