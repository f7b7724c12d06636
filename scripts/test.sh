#!/usr/bin/env bash
# Set up and run every check: ruff, mypy, and the whole test suite on SQLite and on a
# throwaway PostgreSQL cluster (started by the tests themselves; never skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-venv.sh
./scripts/ensure-postgres.sh
bin=.venv/bin
"$bin/ruff" check robot tests migrations
"$bin/ruff" format --check robot tests migrations
"$bin/mypy"
"$bin/python" -m pytest "$@"
