#!/usr/bin/env bash
# Development install on a fresh machine: OpenBLAS (Linux), a virtualenv in .venv, CPU torch first.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "$(uname)" == "Linux" ]] && ! ls /usr/lib/*-linux-gnu/libopenblas.so.0 >/dev/null 2>&1; then
  # MLX's CPU wheel bundles a reference BLAS; holo_mlx preloads OpenBLAS when it is installed.
  sudo_cmd=""; [[ "$(id -u)" -ne 0 ]] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq libopenblas0-pthread
fi

if [[ "$(uname)" == "Linux" ]] && ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  # Headless Chromium and its driver for the playground's browser test (tests/test_playground.py).
  sudo_cmd=""; [[ "$(id -u)" -ne 0 ]] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
fi

[[ -x .venv/bin/python ]] || python3 -m venv .venv
# The pinned CPU build first: any other torch requirement would pull several GB of CUDA packages.
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[dev]"
