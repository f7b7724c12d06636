#!/usr/bin/env bash
# The README's "Running as a systemd service", walked through on this machine as root.
#
# It runs the README's own command block, line by line as written (so the two cannot drift
# apart), in a throwaway root: a private mount namespace where /etc, /opt and /var/lib are
# overlays whose changes land in a temporary directory, deleted at the end. The service user,
# /opt/email-robot, /etc/email-robot and /var/lib/email-robot exist only there; a real
# installation on this machine is never touched.
#
#   `sudo [-u USER] [VAR=value...] command`  runs as sudo would: runuser, a clean environment
#                                            and sudo's secure_path.
#   `# then edit it`                         the edit a sysadmin makes: SQLite in the state
#                                            directory, the local SMTP server below, the
#                                            password file, no grace delay.
#   `systemctl ...`, `journalctl ...`        skipped: there is no systemd PID 1 here. Instead
#                                            the installed unit's ExecStart is run by hand as
#                                            its User=, with its Environment=,
#                                            WorkingDirectory= and UMask=, until it has sent
#                                            one row; SIGTERM must then stop it with exit 0.
#
# The SMTP server (scripts/walkthrough_smtp.py) runs on 127.0.0.1 and records each login:
# every one must carry the password the README installed. WALKTHROUGH_README=FILE walks
# another copy of the README (e.g. an older one, to see it fail).
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=$PWD
readme=$(realpath "${WALKTHROUGH_README:-README.md}")
say() { printf 'walkthrough: %s\n' "$*"; }
fail() { printf 'walkthrough: FAILED: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" != 0 ]; then
    fail "needs root (it creates the service user, as the README does)"
fi

if [ -z "${WALKTHROUGH_SCRATCH:-}" ]; then
    scratch=$(mktemp -d /tmp/robot-walkthrough-XXXXXX)
    chmod 755 "$scratch"
    trap 'rm -rf "$scratch"' EXIT
    status=0
    WALKTHROUGH_SCRATCH=$scratch unshare --mount --propagation private "$0" || status=$?
    exit "$status"
fi

# --- inside the private mount namespace ---------------------------------------------------
scratch=$WALKTHROUGH_SCRATCH
for dir in /etc /opt /var/lib; do
    name=${dir//\//_}
    mkdir -p "$scratch/upper$name" "$scratch/work$name"
    mount -t overlay overlay \
        -o "lowerdir=$dir,upperdir=$scratch/upper$name,workdir=$scratch/work$name" "$dir"
done
say "throwaway root: /etc, /opt and /var/lib are overlays on $scratch"
# A real installation on this machine is hidden under empty folders, so that the steps start
# from nothing (an existing email-robot user is used as it is).
for dir in /etc/email-robot /opt/email-robot /var/lib/email-robot; do
    if [ -e "$dir" ]; then
        mount -t tmpfs -o mode=755 tmpfs "$dir"
        say "hid this machine's $dir"
    fi
done

pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# The local SMTP server the edited robot.ini points at.
python=$checkout/.venv/bin/python
"$python" scripts/walkthrough_smtp.py "$scratch/mail" "$scratch/port" "$scratch/logins" \
    2>"$scratch/smtp.log" &
pids+=($!)
for _ in $(seq 100); do
    [ -s "$scratch/port" ] && break
    sleep 0.1
done
[ -s "$scratch/port" ] || fail "the SMTP server did not start: $(cat "$scratch/smtp.log")"
port=$(cat "$scratch/port")
say "SMTP server on 127.0.0.1:$port"

secure_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# sudo as Debian's default sudoers has it: env_reset, secure_path, HOME of the target user.
sudo() {
    local user=root
    if [ "${1:-}" = -u ]; then
        user=$2
        shift 2
    fi
    local assignments=()
    while [[ "${1:-}" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; do
        assignments+=("$1")
        shift
    done
    local home
    home=$(getent passwd "$user" | cut -d: -f6)
    runuser -u "$user" -- env -i PATH="$secure_path" HOME="$home" USER="$user" \
        LOGNAME="$user" LANG=C.UTF-8 "${assignments[@]}" "$@"
}

# The sysadmin's edit of /etc/email-robot/robot.ini (keys replaced in their sections, the
# rest of the sample kept).
edit_robot_ini() {
    "$python" - "$1" "$port" <<'PY'
import re
import sys
from pathlib import Path

path, port = Path(sys.argv[1]), sys.argv[2]
edits = {
    "database": {"url": "sqlite:////var/lib/email-robot/robot.db"},
    "robot": {"grace_minutes": "0"},
    "smtp": {"host": "127.0.0.1", "port": port, "security": "none",
             "username": "robot@example.org",
             "password_file": "/etc/email-robot/smtp_password"},
}
out, section = [], None
def flush(section):
    for key, value in edits.pop(section, {}).items():
        out.append(f"{key} = {value}")
for line in path.read_text().splitlines():
    header = re.match(r"\[(.+)\]\s*$", line)
    if header:
        if section in edits:
            flush(section)
        section = header.group(1)
    else:
        setting = re.match(r"#?\s*([a-z_]+)\s*=", line)
        if setting and setting.group(1) in edits.get(section, {}):
            key = setting.group(1)
            line = f"{key} = {edits[section].pop(key)}"
    out.append(line)
if section in edits:
    flush(section)
path.write_text("\n".join(out) + "\n")  # in place: owner and mode stay as installed
PY
}

# --- the README's commands, as written ------------------------------------------------------
steps=$(awk '/^## Running as a systemd service/ {section = 1; next}
             section && /^```sh/ {block = 1; next}
             block && /^```/ {exit}
             block {print}' "$readme")
[ -n "$steps" ] || fail "no command block under '## Running as a systemd service' in $readme"
while IFS= read -r step; do
    [ -n "$step" ] || continue
    if [[ "$step" =~ ^(sudo\ )?(systemctl|journalctl)\  ]]; then
        say "skipped (no systemd PID 1 here): $step"
        continue
    fi
    say "\$ $step"
    step_status=0
    eval "$step" </dev/null >"$scratch/step.log" 2>&1 || step_status=$?
    # Each step's output, indented; a long one (pip's) only by its last lines.
    lines=$(wc -l <"$scratch/step.log")
    if [ "$lines" -gt 12 ]; then
        printf '    (%s lines, the last 5:)\n' "$lines"
    fi
    tail -n 5 "$scratch/step.log" | sed 's/^/    /'
    [ "$step_status" = 0 ] || fail "this README step exited $step_status: $step"
    if [[ "$step" == *"# then edit it"* ]]; then
        edit_robot_ini /etc/email-robot/robot.ini
        say "edited /etc/email-robot/robot.ini: SQLite in /var/lib/email-robot, SMTP 127.0.0.1:$port, password_file, grace 0"
    fi
done <<<"$steps"

# --- the unit, verified and its ExecStart run by hand ---------------------------------------
unit=/etc/systemd/system/email-robot.service
[ -f "$unit" ] || fail "the README did not install $unit"
systemd-analyze verify "$unit" || fail "systemd-analyze verify $unit"
setting() { sed -n "s/^$1=//p" "$unit"; }
user=$(setting User)
group=$(setting Group)
workdir=$(setting WorkingDirectory)
umask_value=$(setting UMask)
read -r -a exec_start <<<"$(setting ExecStart)"
mapfile -t environment < <(setting Environment)
if [ -n "$(setting LoadCredential)" ]; then
    fail "the unit has LoadCredential= lines, which this walk-through does not emulate"
fi
ROBOT() { sudo -u "$user" "${environment[@]}" "${exec_start[0]}" "$@"; }

row=$(ROBOT enqueue --to "Ada <ada@example.org>" --subject "walk-through" --text "sent by the unit's ExecStart")
say "enqueued row $row; starting the unit's ExecStart as $user:$group in $workdir: ${exec_start[*]}"
(
    cd "$workdir"
    umask "${umask_value:-0022}"
    # setpriv execs the robot itself (runuser would stay as its parent and swallow SIGTERM).
    exec setpriv --reuid="$user" --regid="$group" --init-groups -- \
        env -i PATH="$secure_path" "${environment[@]}" "${exec_start[@]}"
) >"$scratch/robot.log" 2>&1 &
robot=$!
pids+=("$robot")
for _ in $(seq 300); do
    ROBOT show "$row" 2>/dev/null | grep -Eq "^status +sent$" && break
    kill -0 "$robot" 2>/dev/null || fail "the robot exited early: $(cat "$scratch/robot.log")"
    sleep 0.2
done
ROBOT show "$row" | grep -Eq "^status +sent$" || fail "row $row was not sent: $(cat "$scratch/robot.log")"
kill -TERM "$robot"
robot_status=0
wait "$robot" || robot_status=$?
[ "$robot_status" = 0 ] || fail "the robot exited $robot_status on SIGTERM: $(cat "$scratch/robot.log")"
say "row $row sent; SIGTERM stopped the robot with exit 0"

# --- what the server saw ------------------------------------------------------------------
messages=$(find "$scratch/mail/new" -type f | wc -l)
[ "$messages" -ge 2 ] || fail "the SMTP server got $messages messages, expected email-robot test's and row $row's"
password=$(cat /etc/email-robot/smtp_password)
logins=$(wc -l <"$scratch/logins" 2>/dev/null || echo 0)
[ "$logins" -ge 1 ] || fail "the robot never logged in to the SMTP server"
if grep -v -x -F "robot@example.org $password" "$scratch/logins" >/dev/null; then
    fail "a login did not carry the password of /etc/email-robot/smtp_password"
fi
database=/var/lib/email-robot/robot.db
[ "$(stat -c %U "$database")" = "$user" ] || fail "$database belongs to $(stat -c %U "$database"), not $user"
say "OK: $messages messages received, $logins logins with the installed password, $database owned by $user"
