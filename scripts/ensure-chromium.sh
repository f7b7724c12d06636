#!/usr/bin/env bash
# The console's browser test drives a headless Chromium through Selenium: install Debian's
# chromium and chromium-driver when missing (the test fails, never skips, without them).
set -euo pipefail
have_browser() {
    command -v chromium >/dev/null 2>&1 && { command -v chromedriver >/dev/null 2>&1 || [ -x /usr/lib/chromium/chromedriver ]; }
}
if have_browser; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "Chromium is missing: install the 'chromium' and 'chromium-driver' packages" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
have_browser
