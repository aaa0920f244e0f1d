#!/usr/bin/env bash
# Install headless Chromium (Debian package `chromium`, with a font) for the MLflow UI test
# (tests/test_mlflow_browser.py) and scripts/mlflow_screenshot.py. Idempotent: does nothing when chromium is
# already on PATH, and only says so (the test then skips) where apt-get or root rights are missing or the
# install fails. Never fails the caller.
set -uo pipefail
if command -v chromium >/dev/null 2>&1; then
  echo "[setup_browser] chromium is installed"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[setup_browser] no apt-get here: install Chromium yourself to run the MLflow UI test (it is skipped)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "[setup_browser] not root and no password-less sudo: run 'sudo apt-get install chromium'" \
         "to run the MLflow UI test (it is skipped)"
    exit 0
  fi
fi
echo "[setup_browser] installing chromium from the Debian archive (about 1 minute)"
log=$(mktemp)
if $SUDO apt-get update -qq >"$log" 2>&1 &&
   DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
     chromium fonts-liberation >>"$log" 2>&1; then
  echo "[setup_browser] ok: $(chromium --version 2>/dev/null)"
else
  echo "[setup_browser] apt-get could not install chromium (the MLflow UI test is skipped); last lines of its log:"
  tail -5 "$log"
fi
rm -f "$log"
exit 0
