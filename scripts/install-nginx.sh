#!/usr/bin/env bash
# Debian's nginx (nginx-light) and its JavaScript module (libnginx-mod-http-js, njs),
# which stand in for a shared cache in front of the service in tests/test_shared_cache.py
# and `bench followers --cache` (recordline_dev/cache.py), the module checking read
# passes as Cloud CDN checks signed cookies; installed with apt when missing. Nothing is
# downloaded outside the distribution's archive; the package's own service is not used.
set -euo pipefail

nginx="${NGINX_PATH:-/usr/sbin/nginx}"
module="${NGINX_JS_MODULE:-/usr/lib/nginx/modules/ngx_http_js_module.so}"
if [ -x "$nginx" ] && [ -f "$module" ]; then
  "$nginx" -v 2>&1
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "no $nginx with $module and no apt-get: install nginx and njs, and set" \
    "NGINX_PATH and NGINX_JS_MODULE to them" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
install() { DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"; }
install nginx-light
# Only the read pass tests need the module: without it they say so, and the rest run.
install libnginx-mod-http-js || echo "libnginx-mod-http-js could not be installed:" \
  "the shared cache cannot check read passes (set NGINX_JS_MODULE to njs's module)" >&2
"$nginx" -v 2>&1
