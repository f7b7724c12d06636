#!/usr/bin/env bash
# Set up and run every check: ruff, mypy, lint-imports, and the whole test suite on SQLite, on a
# throwaway PostgreSQL cluster, on a throwaway MariaDB server and against a Dovecot IMAP server
# (all started by the tests themselves from Debian's packages, installed here when missing;
# never skipped), and in a headless Chromium for the console (also from Debian's packages). As
# root it then also walks through the README's production section (scripts/walkthrough.sh)
# and runs all of this again as an ordinary user with Debian's Python from a fresh clone
# (scripts/test-as-user.sh); ROBOT_TEST_ROOT_ONLY=1 leaves those two out.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-venv.sh
./scripts/ensure-postgres.sh
./scripts/ensure-mariadb.sh
./scripts/ensure-dovecot.sh
./scripts/ensure-chromium.sh
bin=.venv/bin
"$bin/ruff" check robot tests migrations scripts
"$bin/ruff" format --check robot tests migrations scripts
"$bin/mypy"
"$bin/lint-imports"
"$bin/python" -m pytest "$@"
if [ "$(id -u)" = 0 ]; then
    if [ -n "${ROBOT_TEST_ROOT_ONLY:-}" ]; then
        echo "test.sh: ROBOT_TEST_ROOT_ONLY is set: no walk-through, no run as an ordinary user"
    else
        echo "== test.sh: checks as root done in ${SECONDS}s"
        echo "== test.sh: the README's production section, walked through (scripts/walkthrough.sh)"
        started=$SECONDS
        ./scripts/walkthrough.sh
        echo "== test.sh: walk-through done in $((SECONDS - started))s"
        echo "== test.sh: the same checks as an ordinary user with Debian's Python, from a fresh clone (scripts/test-as-user.sh)"
        started=$SECONDS
        ./scripts/test-as-user.sh "$@"
        echo "== test.sh: run as an ordinary user done in $((SECONDS - started))s; all of make test in ${SECONDS}s"
    fi
fi
