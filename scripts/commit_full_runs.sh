#!/usr/bin/env bash
# Commit the resumable state of the full runs under results/full/ every INTERVAL seconds (default 1200),
# so a stop loses at most that much training. Only results/full is committed; other work is left alone.
# A submission's size is capped (packed and as diffs): while HEAD is still the last state commit it is
# amended rather than followed by another, so a checkpoint rewritten every interval is submitted once.
# Finished runs leave the tree afterwards with `python scripts/checkpoints.py slim` (a commit of its own).
set -uo pipefail
cd "$(dirname "$0")/.."
interval=${1:-1200}
# What has landed: LANDED, else the commit this checkout had when a loop first ran in it (kept in .git, so a
# restarted loop still amends its own unlanded state commit; a fresh clone starts over from its HEAD).
mark=$(git rev-parse --git-dir)/longtail-landed
if [ -n "${LANDED:-}" ]; then landed=$LANDED
elif [ -s "$mark" ] && git merge-base --is-ancestor "$(cat "$mark")" HEAD 2>/dev/null; then landed=$(cat "$mark")
else landed=$(git rev-parse HEAD); echo "$landed" > "$mark"; fi
msg="Full runs: resumable state"
while true; do
  sleep "$interval"
  # A finished stage (final.pt written) never reads its checkpoint again: drop it to keep the repo small.
  for f in results/full/*/*/*/final.pt; do [ -e "$f" ] && rm -f "$(dirname "$f")/checkpoint.pt"; done
  git add -A results/full 2>/dev/null || continue
  git diff --cached --quiet -- results/full && continue
  amend=()
  # never amend what has landed: LANDED (default: the commit this loop started on) and its ancestors
  if git log -1 --format=%s | grep -q "^$msg" && ! git merge-base --is-ancestor HEAD "$landed"; then amend=(--amend); fi
  git commit -q "${amend[@]}" -m "$msg $(date -u +%Y-%m-%dT%H:%MZ)" -- results/full || true
done
