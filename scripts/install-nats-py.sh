#!/usr/bin/env bash
# Installs the pinned nats-py (the NATS client for Python) into .tools/nats-py
# (git-ignored), for the example Python worker (examples/python-worker) and
# the test that runs it next to Rust workers (tests/tests/protocol.rs).
# Only pip and PyPI are needed; use it with PYTHONPATH=.tools/nats-py.
set -euo pipefail
VERSION="${NATS_PY_VERSION:-2.16.0}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.tools/nats-py"
if [ -d "$dest/nats_py-$VERSION.dist-info" ] && PYTHONPATH="$dest" python3 -c 'import nats.js' 2>/dev/null; then
  echo "nats-py $VERSION already installed at $dest"
  exit 0
fi
python3 -m pip --version >/dev/null 2>&1 || { echo "install-nats-py: python3 with pip is required" >&2; exit 1; }
rm -rf "$dest"
python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
  --root-user-action=ignore --target "$dest" "nats-py==$VERSION"
PYTHONPATH="$dest" python3 -c 'import nats.js'
echo "installed nats-py $VERSION at $dest"
