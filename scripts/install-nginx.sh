#!/usr/bin/env bash
# Debian's nginx (nginx-light), which stands in for a shared cache in front of the
# service in tests/test_shared_cache.py and `bench followers --cache`
# (recordline_dev/cache.py), installed with apt when it is missing. Nothing is
# downloaded outside the distribution's archive; the package's own service is not used.
set -euo pipefail

nginx="${NGINX_PATH:-/usr/sbin/nginx}"
if [ -x "$nginx" ]; then
  "$nginx" -v 2>&1
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "no $nginx and no apt-get: install nginx and set NGINX_PATH to it" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nginx-light
"$nginx" -v 2>&1
