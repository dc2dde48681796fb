#!/usr/bin/env bash
# Debian's Chromium, which the dashboard's browser tests drive (Playwright's own browser
# download is not used). Installs it with apt-get when it is missing and this machine
# can; otherwise says so and leaves it to the tests to fail with the same advice.
set -u
CHROMIUM=${AIKI_CHROMIUM:-/usr/bin/chromium}
[ -x "$CHROMIUM" ] && exit 0
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "installing Debian's chromium for the browser tests"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
    && exit 0
fi
echo "warning: no Chromium at $CHROMIUM; the dashboard's tests need it (apt-get install chromium)" >&2
exit 0
