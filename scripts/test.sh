#!/usr/bin/env bash
# Install everything and run the test suite (the command README.md gives and CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest "$@"
