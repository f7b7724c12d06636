#!/usr/bin/env bash
# Set everything up and run the robot on its embedded default: SQLite (./robot.db) and a
# local capture SMTP server on 127.0.0.1:2525 that prints each message it receives and
# stores it in ./sink-mail/ (a Maildir). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-venv.sh
bin=.venv/bin
export ROBOT_CONFIG=${ROBOT_CONFIG:-robot.ini}
# robot.ini keeps the real 5-minute "oops window"; for trying it out, 6 seconds.
export ROBOT_ROBOT_GRACE_MINUTES=${ROBOT_ROBOT_GRACE_MINUTES:-0.1}
# The capture server listens on 2525 (robot.ini's port); when something else holds that port
# the tour takes a free one instead and says so, rather than mail whatever listens there.
port=$("$bin/python" - <<'PY'
import socket
for port in (2525, 0):
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(probe.getsockname()[1])
        break
PY
)
if [ "$port" != 2525 ]; then
    echo "port 2525 is taken on 127.0.0.1: the capture server and the robot use port $port instead"
fi
export ROBOT_SMTP_PORT=$port
"$bin/email-robot" db upgrade
"$bin/email-robot" sink --port "$port" --maildir sink-mail &
sink=$!
trap 'kill "$sink" 2>/dev/null || true' EXIT
sleep 1
if ! kill -0 "$sink" 2>/dev/null; then
    echo "the capture server could not start on 127.0.0.1:$port; stopping" >&2
    exit 1
fi
# The operators' console, with a user made for the tour (a password of its own each time).
web_port=$("$bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
tour_password=$("$bin/python" -c 'import secrets; print(secrets.token_urlsafe(12))')
printf '%s\n' "$tour_password" | "$bin/email-robot" user add tour --role admin >/dev/null 2>&1 \
    || printf '%s\n' "$tour_password" | "$bin/email-robot" user passwd tour >/dev/null
"$bin/email-robot" web --listen "127.0.0.1:$web_port" 2>/dev/null &
web=$!
trap 'kill "$sink" "$web" 2>/dev/null || true' EXIT
id=$("$bin/email-robot" enqueue --to "You <you@example.org>" --subject "Hello from email-robot" \
    --text "This message went through the outbox table, waited out the grace delay and was sent.")
cat <<MSG

Outbox row $id is waiting out its grace delay (6 seconds here). Add more from another shell
(the first line gives that shell the tour's 6-second grace delay too):
    export ROBOT_ROBOT_GRACE_MINUTES=$ROBOT_ROBOT_GRACE_MINUTES ROBOT_SMTP_PORT=$port
    sqlite3 robot.db "INSERT INTO outbox (recipient, subject, body_text) VALUES ('a@example.org', 'Hi', 'Hello')"
    .venv/bin/email-robot enqueue --to a@example.org --subject Hi --text Hello
    .venv/bin/email-robot list          .venv/bin/email-robot show $id
Each message the sink receives is printed here (and stored in sink-mail/new/). Ctrl-C stops.

The operators' console: http://127.0.0.1:$web_port  (user tour, password $tour_password)

MSG
"$bin/email-robot" run
