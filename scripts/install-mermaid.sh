#!/usr/bin/env bash
# Mermaid's script, which draws the documentation site's diagrams (`python3 dev.py docs`):
# the theme would fetch it from unpkg.com when a page opens, so the site built for
# reading offline showed each diagram as its source text. Taken from the npm registry
# at one version, checked against the registry's own integrity for it, and kept in
# .tools/mermaid/ (not committed: 3.5 MB); docs/hooks.py copies it into the site.
set -euo pipefail
cd "$(dirname "$0")/.."

version="11.17.2"
integrity="sha512-V6K3C8EBdEsPFZXSKMJe6ppQOENxuHARr9GvHX4hh47lAbhMRD9qf4oEK7LoaRQxULMa80/qt5gHO73aCleBBg=="
target=".tools/mermaid"
if [ -f "$target/mermaid-$version.min.js" ]; then
  echo "mermaid: $version"
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "mermaid: no npm here; the site's diagrams stay as their source text" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "mermaid@$version" >/dev/null)
tarball="$work/mermaid-$version.tgz"
found="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
if [ "$found" != "$integrity" ]; then
  echo "mermaid: mermaid-$version.tgz is not what the registry published ($found)" >&2
  exit 1
fi
tar -xzf "$tarball" -C "$work" package/dist/mermaid.min.js package/LICENSE
mkdir -p "$target"
rm -f "$target"/mermaid-*.min.js
cp "$work/package/LICENSE" "$target/LICENSE"
cp "$work/package/dist/mermaid.min.js" "$target/mermaid-$version.min.js"
echo "mermaid: $version"
