#!/usr/bin/env bash
# Install (idempotent) and run the test suite. This is the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest -q tests --durations=25 "$@"
