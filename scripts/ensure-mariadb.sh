#!/usr/bin/env bash
# The MariaDB tests start a throwaway server from the installed server binaries
# (mariadb-install-db, mariadbd). Install them from Debian's packages when they are missing,
# and keep the packaged service stopped and disabled: the tests run their own, on a free port.
set -euo pipefail
have_server() {
    PATH="$PATH:/usr/sbin" command -v mariadbd >/dev/null 2>&1 \
        && PATH="$PATH:/usr/sbin" command -v mariadb-install-db >/dev/null 2>&1
}
if have_server; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "MariaDB server binaries are missing: install the 'mariadb-server' package" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends mariadb-server >/dev/null
# The package may start and enable its own service: stop and disable it (no systemd in a
# container: the init script, if any, then nothing).
if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    systemctl disable --now mariadb >/dev/null 2>&1 || true
elif [ -x /etc/init.d/mariadb ]; then
    /etc/init.d/mariadb stop >/dev/null 2>&1 || true
    update-rc.d mariadb disable >/dev/null 2>&1 || true
fi
have_server
