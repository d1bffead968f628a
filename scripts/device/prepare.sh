#!/usr/bin/env bash
# Step 1 of scripts/device/README.md, on a machine WITH network access, from the repository root: stage what an
# offline GPU host lacks into two git-ignored folders, to be copied to the host with the checkout.
#   .whl/      wheels of keras, namex, optree and pydantic (with its dependencies) for the host's CPython
#              (PY_VERSION, default 3.12) on x86_64 Linux, and diffusers with importlib_metadata for the PyTorch
#              reference of bench/compare_reference.py; the host must already have JAX with CUDA, numpy,
#              h5py, pillow, pyyaml, rich, typer, scikit-image, scikit-learn (and PyTorch for the reference)
#   .devdata/  the raw Fashion-MNIST .gz files, copied from DATA_DIR (default: $IMAGEGEN_DATA_DIR, else
#              ../shared/datasets), a folder holding fashion_mnist/*.gz
# Usage: bash scripts/device/prepare.sh [DATA_DIR]
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
DATA_DIR=${1:-${IMAGEGEN_DATA_DIR:-../shared/datasets}}
PY_VERSION=${PY_VERSION:-3.12}
grep -qx '/.devdata/' .git/info/exclude 2>/dev/null || echo '/.devdata/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl .devdata/fashion_mnist
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# The versions requirements.lock pins (the environment CI and the Docker image install).
pins=()
for name in keras namex optree pydantic pydantic-core annotated-types typing-inspection diffusers importlib-metadata; do
  pins+=("$(grep -m1 -i "^$name==" requirements.lock | cut -d' ' -f1)")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  "${plat[@]}" -d .whl "${pins[@]}"
cp "$DATA_DIR"/fashion_mnist/*.gz .devdata/fashion_mnist/
du -sh .whl .devdata
