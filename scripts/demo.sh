#!/usr/bin/env bash
# Offline demo: tiny random-weight Holo1.5-architecture checkpoint -> MLX folder -> generate.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x .venv/bin/python ]] || bash scripts/setup.sh
.venv/bin/python -c "
from holo_mlx.testing import build_checkpoint, synthetic_screenshot
build_checkpoint('models/tiny-hf')
synthetic_screenshot(1280, 720).save('models/demo.png')"
.venv/bin/python -m convert --hf-path models/tiny-hf --mlx-path models/tiny-mlx --force
.venv/bin/python -m holo_mlx.generate --model models/tiny-mlx --image models/demo.png \
    --prompt "Click the Submit button." --max-tokens 24
