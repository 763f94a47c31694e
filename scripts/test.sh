#!/usr/bin/env bash
# The test command of the README: set up what is missing, lint, type-check, run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "==> ruff"
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
echo "==> mypy"
.venv/bin/mypy src
echo "==> import layers"
.venv/bin/lint-imports
echo "==> pytest"
.venv/bin/python -m pytest -q "$@"
