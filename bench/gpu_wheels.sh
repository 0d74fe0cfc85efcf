#!/usr/bin/env bash
# Download, on a machine with pip access, the wheels bench/gpu_check.sh needs on an offline GPU machine whose python
# (PYVER, default 3.12) already has torch, transformers, numpy, pandas, matplotlib and onnx: the workbench's other
# dependencies, pure-Python or manylinux x86-64, into .whl/ (git-ignored; carry it to the GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.12}
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  pydantic pydantic-core annotated-types typing-inspection typing-extensions fastcore
ls .whl
