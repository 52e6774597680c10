#!/usr/bin/env bash
# Install (if needed) and run the test suite. Tests read real data from $LONGTAIL_DATA
# (default: ../shared/data beside the repository) and skip those parts if it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export LONGTAIL_DATA=${LONGTAIL_DATA:-$(cd .. && pwd)/shared/data}
export MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184
exec .venv/bin/python -m pytest -q "$@"
