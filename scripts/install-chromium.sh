#!/usr/bin/env bash
# Installs Chromium and chromedriver from the distribution's packages, for
# the web console's browser test (tests/tests/console.rs). Does nothing when
# both are already on PATH (or named by $CHROME_BIN and $CHROMEDRIVER).
# Needs apt-get (Debian or Ubuntu) and root, or sudo without a password.
set -euo pipefail
have() { command -v "$1" >/dev/null 2>&1; }
chrome="${CHROME_BIN:-}"
[ -n "$chrome" ] || chrome="$(command -v chromium || command -v chromium-browser || true)"
driver="${CHROMEDRIVER:-$(command -v chromedriver || true)}"
if [ -n "$chrome" ] && [ -x "$chrome" ] && [ -n "$driver" ] && [ -x "$driver" ]; then
  echo "chromium and chromedriver already installed ($chrome, $driver)"
  exit 0
fi
if ! have apt-get; then
  echo "install-chromium: no apt-get here; install Chromium and chromedriver yourself and set CHROME_BIN and CHROMEDRIVER" >&2
  exit 1
fi
as_root=()
if [ "$(id -u)" -ne 0 ]; then
  if have sudo && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
  else
    echo "install-chromium: installing packages needs root (or sudo without a password)" >&2
    exit 1
  fi
fi
# Debian names the packages chromium and chromium-driver; Ubuntu's
# chromium-browser and chromium-chromedriver are snap wrappers, which CI
# machines rarely run: those need CHROME_BIN and CHROMEDRIVER.
"${as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends \
  chromium chromium-driver
chromium --version
chromedriver --version
