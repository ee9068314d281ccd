#!/usr/bin/env bash
# The SLURM test: start (or reuse) the one-node cluster of this host, then run the workflow through
# it (tests/test_slurm.py: profiles/slurm, the packaged MobileNetV2's data, model and activation store).
#   bash scripts/slurm_test.sh        # as root the first time (slurm_up.sh installs and starts SLURM)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/slurm_up.sh && .venv/bin/python -m pytest -m slurm tests/test_slurm.py "$@"
