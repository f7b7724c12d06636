#!/usr/bin/env bash
# The benchmark's receiving server is Postfix's smtp-sink (Debian package `postfix`).
# Install it noninteractively when missing, and make sure the Postfix MTA itself is not left
# running or enabled: the benchmark only wants the smtp-sink binary.
set -euo pipefail
have_sink() {
    command -v smtp-sink >/dev/null 2>&1 || [ -x /usr/sbin/smtp-sink ]
}
stop_postfix() {
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl disable --now postfix.service >/dev/null 2>&1 || true
    fi
    if command -v postfix >/dev/null 2>&1; then
        postfix stop >/dev/null 2>&1 || true
    fi
    if command -v update-rc.d >/dev/null 2>&1; then
        update-rc.d postfix disable >/dev/null 2>&1 || true
    fi
}
if ! have_sink; then
    if [ "$(id -u)" != 0 ]; then
        echo "smtp-sink is missing: install the 'postfix' package (as root)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Without this, postfix's postinst asks for a mail name (or fails without a terminal).
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    echo "postfix postfix/mailname string localhost" | debconf-set-selections
    # Keep the package scripts from starting the MTA while it installs.
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        own_policy=1
    fi
    trap '[ "$own_policy" = 1 ] && rm -f "$policy"' EXIT
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postfix >/dev/null
fi
stop_postfix
have_sink
