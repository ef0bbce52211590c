#!/usr/bin/env bash
# Install what is missing, then run the whole test suite (all tiers, real stacks included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
