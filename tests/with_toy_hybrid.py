"""Run a holo-mlx entry point with the toy hybrid family registered: `python with_toy_hybrid.py
serve.py ARGS` (what each rank that mlx.launch starts runs in tests/test_hybrid.py)."""

import runpy
import sys
from pathlib import Path

from holo_mlx.runtime import use_fast_blas

use_fast_blas()  # before argv changes: the re-exec must run this wrapper again
sys.path.insert(0, str(Path(__file__).parent))

import toy_hybrid  # noqa: E402
from holo_mlx.models import register  # noqa: E402

register(toy_hybrid.FAMILY)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
