#!/usr/bin/env bash
# Runs the whole test suite (lint, kernel compilation, pytest) in the project's .venv,
# creating or updating it first. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
ruff check .
python -m pytest -q "$@"
