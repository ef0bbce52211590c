#!/usr/bin/env bash
# Install what is missing, then run the site-in-a-box (`ykt demo`). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/ykt demo "$@"
