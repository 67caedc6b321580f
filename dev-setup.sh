#!/usr/bin/env bash
# One command for a development machine (and CI): the package with every extra the tests use, and a real
# browser for the page tests (Debian's chromium; Playwright's own browser download cannot work offline).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m pip install -e ".[dev]"
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium dataset-fashion-mnist >/dev/null
    else
        echo "dev-setup: no chromium found; install Debian's 'chromium' package to run the page tests" >&2
    fi
fi
