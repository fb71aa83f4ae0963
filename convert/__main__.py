"""python -m convert: Hugging Face Holo1.5 checkpoint -> MLX folder (mlx-lm's flag names)."""

import argparse
import signal
import sys

from convert.convert import DEFAULT_HF_PATH, DTYPES, Q_BITS, Q_GROUP_SIZES, ConversionError, convert
from holo_mlx.runtime import use_fast_blas


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m convert", description=__doc__)
    parser.add_argument("--hf-path", default=DEFAULT_HF_PATH,
                        help=f"hub repo id or local folder (default {DEFAULT_HF_PATH})")
    parser.add_argument("--mlx-path",
                        help="output folder (default models/<name>-mlx or models/<name>-mlx-<N>bit)")
    parser.add_argument("--dtype", choices=DTYPES,
                        help="float type of the weights (and of the quantization scales); "
                             "default: the checkpoint's own, else bfloat16")
    parser.add_argument("-q", "--quantize", action="store_true", help="quantize the weights")
    parser.add_argument("--q-bits", type=int, choices=Q_BITS, default=4, help="bits per weight (default 4)")
    parser.add_argument("--q-group-size", type=int, choices=Q_GROUP_SIZES, default=64,
                        help="weights per scale/bias pair (default 64)")
    parser.add_argument("--quantize-vision", action=argparse.BooleanOptionalAction, default=False,
                        help="with -q, also quantize the vision tower (default: keep it in float; "
                             "see docs/convert.md)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --mlx-path")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    use_fast_blas()  # re-executes the process, so before any work
    args = parse_args(argv)
    # `kill` raises SystemExit like Ctrl-C raises KeyboardInterrupt, so the staging folder is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        path = convert(**vars(args))
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
