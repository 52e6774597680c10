#!/usr/bin/env bash
# Create .venv (if needed) and install longtail with what it needs. Idempotent and quick when done.
# torch is pinned by constraints.txt, so no later install can swap it for another build; where a torch
# is already importable (a CUDA build, say) it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
if ! "$VPY" -c "import torch" 2>/dev/null; then
  "$VPY" -m pip install -q -c constraints.txt "torch==2.13.0"
fi
if ! "$VPY" -c "import numpy, yaml, PIL, pytest, matplotlib, hypothesis, safetensors" 2>/dev/null; then
  "$VPY" -m pip install -q -c constraints.txt numpy pyyaml pillow pytest matplotlib hypothesis safetensors
fi
# Optional extras, as import-name:package; longtail works without them, so a failed install only warns.
# scikit-learn: t-SNE in `longtail report` (PCA otherwise); the tests exercise it.
# simplejpeg: the fastest JPEG decoder for ImageNet-scale folders (Pillow otherwise), a wheel with its own libjpeg-turbo.
for pair in sklearn:scikit-learn simplejpeg:simplejpeg; do
  "$VPY" -c "import ${pair%%:*}" 2>/dev/null || "$VPY" -m pip install -q -c constraints.txt "${pair#*:}" \
    || echo "install.sh: optional package ${pair#*:} not installed" >&2
done
# The editable install gives the `longtail` console script; --no-deps so it never touches torch.
if [ ! -x .venv/bin/longtail ]; then
  "$VPY" -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || "$VPY" -m pip install -q --no-deps -e .
fi
