#!/usr/bin/env bash
# Install headless Chromium for the HTML-report rendering test (tests/test_report.py), when it is missing.
# Debian/Ubuntu: `apt-get install -y chromium` (~80 s on a fresh machine). Idempotent: exits at once when a
# Chromium is already on PATH (or CHROMIUM points at one). Prints the binary's path on the last line.
# Exit status 0 = Chromium available; 1 = it could not be installed (the test then skips, saying why).
set -uo pipefail

find_chromium() {
  if [ -n "${CHROMIUM:-}" ] && [ -x "${CHROMIUM}" ]; then echo "${CHROMIUM}"; return 0; fi
  for b in chromium chromium-browser google-chrome-stable google-chrome; do
    if command -v "$b" >/dev/null 2>&1; then command -v "$b"; return 0; fi
  done
  return 1
}

if path=$(find_chromium); then
  echo "[chromium] already installed: $path"
  echo "$path"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "[chromium] not installed and no apt-get on this machine; install Chromium and set CHROMIUM=<binary>" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "[chromium] not installed; apt-get needs root (no passwordless sudo)" >&2
    exit 1
  fi
fi

start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
echo "[chromium] apt-get install -y chromium"
if ! $SUDO apt-get install -y -q --no-install-recommends chromium >/tmp/install_chromium.log 2>&1; then
  # a fresh machine may have no package lists yet
  $SUDO apt-get update -q >>/tmp/install_chromium.log 2>&1 || true
  if ! $SUDO apt-get install -y -q --no-install-recommends chromium >>/tmp/install_chromium.log 2>&1; then
    echo "[chromium] apt-get install failed (log: /tmp/install_chromium.log):" >&2
    tail -5 /tmp/install_chromium.log >&2
    exit 1
  fi
fi
if ! path=$(find_chromium); then
  echo "[chromium] installed the package but found no chromium binary on PATH" >&2
  exit 1
fi
echo "[chromium] installed in $(( $(date +%s) - start ))s: $path"
echo "$path"
