#!/usr/bin/env bash
# `make test` as an ordinary user with Debian's Python, from a fresh clone: what a new
# developer does. Run as root (by scripts/test.sh, after the root run has installed the
# system packages): it creates the user ROBOT_TEST_USER (default robot-test) when missing,
# clones this checkout's HEAD into a temporary folder that user owns, copies over the
# working tree's uncommitted changes (so that a local run tests what you have), and runs
# `make test` there as that user with PYTHON=/usr/bin/python3 building the venv and a clean
# environment (only CI and the pip and proxy settings pass through). Arguments go to
# pytest (it then runs scripts/test.sh, which is what make test runs, with them). The folder
# is deleted at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=$PWD
user=${ROBOT_TEST_USER:-robot-test}
python=${ROBOT_TEST_PYTHON:-/usr/bin/python3}
say() { printf 'test-as-user: %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
    echo "test-as-user: run it as root (it creates the user and hands it a clone)" >&2
    exit 1
fi
if ! getent passwd "$user" >/dev/null; then
    useradd --create-home --shell /bin/bash --comment "email-robot test runs" "$user"
    say "created the user $user"
fi
home=$(getent passwd "$user" | cut -d: -f6)

work=$(mktemp -d /tmp/robot-as-user-XXXXXX)
trap 'rm -rf "$work"' EXIT
clone=$work/email-robot
git clone --quiet --no-hardlinks "$checkout" "$clone"
# The uncommitted changes: modified and untracked files (never what .gitignore names).
changed=$(git ls-files --modified --others --exclude-standard -z -- . ':!.venv' | tr '\0' '\n' | grep -c . || true)
git ls-files --modified --others --exclude-standard -z -- . ':!.venv' \
    | tar --null --files-from=- --create --file=- | tar --extract --file=- --directory="$clone"
chown -R "$user:" "$work"
say "user $user (uid $(id -u "$user")), $("$python" --version) at $python"
say "clone of HEAD $(git rev-parse --short HEAD) in $clone, plus $changed uncommitted file(s)"

environment=(HOME="$home" USER="$user" LOGNAME="$user" LANG=C.UTF-8
             PATH=/usr/local/bin:/usr/bin:/bin PYTHON="$python")
while IFS='=' read -r name _; do
    case "$name" in
        CI | PIP_* | http_proxy | https_proxy | no_proxy | HTTP_PROXY | HTTPS_PROXY | NO_PROXY)
            environment+=("$name=${!name}") ;;
    esac
done < <(env)
command=(make test)
if [ $# -gt 0 ]; then
    command=(./scripts/test.sh "$@")  # what make test runs, with pytest's arguments
fi
say "running: ${command[*]} (in $clone, as $user)"
cd "$clone"
runuser -u "$user" -- env -i "${environment[@]}" "${command[@]}"
