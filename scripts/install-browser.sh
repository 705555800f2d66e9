#!/usr/bin/env bash
# Debian's Chromium, which the console's browser tests drive (tests/console/), installed
# with apt when it is missing. Nothing is downloaded outside the distribution's archive:
# Playwright (from PyPI, in dev.py's environment) drives this browser as it is.
set -euo pipefail

chromium="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [ -x "$chromium" ]; then
  echo "chromium: $("$chromium" --version 2>/dev/null || echo "$chromium")"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "no $chromium and no apt-get: install Chromium and set CHROMIUM_PATH to it" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium
"$chromium" --version
