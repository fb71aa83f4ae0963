#!/usr/bin/env bash
# Offline demo: a tiny random-weight Holo1.5-architecture checkpoint -> MLX folder -> generate.
#   bash scripts/demo.sh                generates once from the demo model
#   bash scripts/demo.sh serve [ARGS]   serves the demo model (ARGS go to serve.py)
# The model is built once, under $HOLO_DEMO_DIR (default models/).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x .venv/bin/python ]] || bash scripts/setup.sh
demo="${HOLO_DEMO_DIR:-models}"
if [[ ! -f "$demo/tiny-mlx/config.json" ]]; then
    .venv/bin/python -c "
import sys
from holo_mlx.testing import build_checkpoint, synthetic_screenshot
build_checkpoint(sys.argv[1] + '/tiny-hf')
synthetic_screenshot(1280, 720).save(sys.argv[1] + '/demo.png')" "$demo"
    .venv/bin/python -m convert --hf-path "$demo/tiny-hf" --mlx-path "$demo/tiny-mlx" --force
fi
if [[ "${1:-}" == serve ]]; then
    shift
    exec .venv/bin/python serve.py --model "$demo/tiny-mlx" "$@"
fi
.venv/bin/python -m holo_mlx.generate --model "$demo/tiny-mlx" --image "$demo/demo.png" \
    --prompt "Click the Submit button." --max-tokens 24
