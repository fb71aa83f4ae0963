#!/usr/bin/env bash
# Install everything and run the test suite (the command README.md gives and CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Two workers, each module whole on one of them (its module-scoped servers start once): the suite
# spends much of its time starting processes and waiting on them, which a second worker overlaps.
.venv/bin/python -m pytest -n 2 --dist loadfile "$@"
