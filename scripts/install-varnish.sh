#!/usr/bin/env bash
# Debian's Varnish, which stands in for a shared cache in front of the service in
# `bench followers --cache --proxy varnish` (recordline_dev/varnish.py), installed with
# apt when it is missing. Nothing is downloaded outside the distribution's archive; the
# package's own service is not used.
set -euo pipefail

varnishd="${VARNISHD_PATH:-/usr/sbin/varnishd}"
if [ -x "$varnishd" ]; then
  "$varnishd" -V 2>&1 | head -1
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "no $varnishd and no apt-get: install varnish and set VARNISHD_PATH to it" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends varnish
"$varnishd" -V 2>&1 | head -1
