#!/usr/bin/env bash
# One command for a development machine (and CI): a virtual environment at .venv with the package and
# every extra the tests use, and, as root, Debian's chromium (the page tests' real browser; Playwright's
# own browser download cannot work offline) and dataset-fashion-mnist (real photos for the first-run
# tests and benchmarks). Run the tests with `.venv/bin/python -m pytest -q`: no activation needed.
#
# Why the environment is large (about 6.8 GB): torch from PyPI is the CUDA build (3.2 GB of it NVIDIA
# libraries) even on a CPU-only machine. The CPU-only build lives on PyTorch's own index, which is not
# reachable here; a CPU torch wheel beside PyPI's torchvision fails to import ("operator torchvision::nms
# does not exist"), and open_clip needs torchvision. See benchmarks/results/setup.md.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -e ".[dev]"
# clip-retrieval only for its ClipClient (tests/test_serve_clip.py talks to `cgx serve` with it): the client
# needs only requests (in dev), while the package's own requirements (wandb, img2dataset, clip-anytorch,
# sentence-transformers, ...) would pull gigabytes and pin other versions, so it comes without them.
.venv/bin/python -m pip install --no-deps "clip-retrieval==2.45.0"

missing=()
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium)
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "dev-setup: missing Debian packages ${missing[*]} (the page tests and real-photo checks skip without them):" \
             "sudo apt-get install ${missing[*]}" >&2
    fi
fi
echo "dev-setup: ready; run the tests with .venv/bin/python -m pytest -q" >&2
