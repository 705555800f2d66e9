#!/usr/bin/env bash
# Debian's wrk, which loads the service in the benchmarks (bench/harness.py) and their
# small runs in tests/test_benches.py, installed with apt when it is missing. Nothing is
# downloaded outside the distribution's archive.
set -euo pipefail

if command -v wrk >/dev/null; then
  echo "wrk: $(command -v wrk)"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "no wrk and no apt-get: install wrk onto PATH" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends wrk
echo "wrk: $(command -v wrk)"
