#!/usr/bin/env bash
# Set up and run every check: ruff, mypy, lint-imports, and the whole test suite on SQLite, on a
# throwaway PostgreSQL cluster, on a throwaway MariaDB server and against a Dovecot IMAP server
# (all started by the tests themselves from Debian's packages, installed here when missing;
# never skipped), and in a headless Chromium for the console (also from Debian's packages).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-venv.sh
./scripts/ensure-postgres.sh
./scripts/ensure-mariadb.sh
./scripts/ensure-dovecot.sh
./scripts/ensure-chromium.sh
bin=.venv/bin
"$bin/ruff" check robot tests migrations
"$bin/ruff" format --check robot tests migrations
"$bin/mypy"
"$bin/lint-imports"
"$bin/python" -m pytest "$@"
