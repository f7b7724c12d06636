#!/usr/bin/env bash
# The PostgreSQL tests start a throwaway cluster from the installed server binaries
# (initdb, pg_ctl). Install them from Debian's packages when they are missing.
set -euo pipefail
have_server() {
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1
}
if have_server; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "PostgreSQL server binaries are missing: install the 'postgresql' package" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql >/dev/null
# The package may start its own cluster: the tests use their own, on a free port.
if command -v pg_ctlcluster >/dev/null 2>&1; then
    for conf in /etc/postgresql/*/main; do
        [ -d "$conf" ] && pg_ctlcluster "$(basename "$(dirname "$conf")")" main stop 2>/dev/null || true
    done
fi
have_server
