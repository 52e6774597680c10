#!/usr/bin/env bash
# Commit the resumable state of the full runs under results/full/ every INTERVAL seconds (default 600),
# so a stop loses at most that much training. Only results/full is committed; other work is left alone.
set -uo pipefail
cd "$(dirname "$0")/.."
interval=${1:-600}
while true; do
  sleep "$interval"
  # A finished stage (final.pt written) never reads its checkpoint again: drop it to keep the repo small.
  for f in results/full/*/*/*/final.pt; do [ -e "$f" ] && rm -f "$(dirname "$f")/checkpoint.pt"; done
  git add -A results/full 2>/dev/null || continue
  git diff --cached --quiet -- results/full && continue
  git commit -q -m "Full runs: resumable state $(date -u +%Y-%m-%dT%H:%MZ)" -- results/full || true
done
