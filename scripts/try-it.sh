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
"$bin/email-robot" db upgrade
"$bin/email-robot" sink --port 2525 --maildir sink-mail &
sink=$!
trap 'kill "$sink" 2>/dev/null || true' EXIT
sleep 1
id=$("$bin/email-robot" enqueue --to "You <you@example.org>" --subject "Hello from email-robot" \
    --text "This message went through the outbox table, waited out the grace delay and was sent.")
cat <<MSG

Outbox row $id is waiting out its grace delay (6 seconds here). Add more from another shell:
    sqlite3 robot.db "INSERT INTO outbox (recipient, subject, body_text) VALUES ('a@example.org', 'Hi', 'Hello')"
    .venv/bin/email-robot enqueue --to a@example.org --subject Hi --text Hello
    .venv/bin/email-robot list          .venv/bin/email-robot show $id
Each message the sink receives is printed here (and stored in sink-mail/new/). Ctrl-C stops.

MSG
"$bin/email-robot" run
