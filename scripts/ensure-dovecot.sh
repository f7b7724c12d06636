#!/usr/bin/env bash
# The bounce-mailbox tests start a private Dovecot IMAP server from the installed binary,
# with their own configuration and ports. Install it from Debian's packages when missing,
# and never leave the system's own Dovecot service running.
set -euo pipefail
have_server() {
    [ -x /usr/sbin/dovecot ] && [ -x /usr/lib/dovecot/imap ] && [ -x /usr/lib/dovecot/imap-login ]
}
if have_server; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "Dovecot is missing: install the 'dovecot-imapd' package" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Keep the package from starting its service (the usual policy-rc.d hook of Debian).
policy=/usr/sbin/policy-rc.d
added_policy=
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    added_policy=1
fi
cleanup() {
    if [ -n "$added_policy" ]; then
        rm -f "$policy"
    fi
}
trap cleanup EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends dovecot-imapd >/dev/null
# Should a service have started all the same (an init that ignores policy-rc.d), stop it:
# the tests run their own server on free ports.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet dovecot 2>/dev/null; then
    systemctl stop dovecot || true
    systemctl disable --quiet dovecot 2>/dev/null || true
fi
if [ -e /run/dovecot/master.pid ]; then
    /usr/sbin/dovecot stop 2>/dev/null || true
fi
have_server
