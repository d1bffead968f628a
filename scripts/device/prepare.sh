#!/usr/bin/env bash
# Run HERE (not on the GPU box), from the repo root, before a `device` run: stages what the lent GPU machine
# lacks into git-ignored folders that the device tool's `carry` takes along.
#   .whl/      keras + namex + optree + pydantic (+ its deps) wheels for CPython 3.12 (JAX, numpy, h5py,
#              pillow, pyyaml, rich, typer, scikit-image/-learn are already on that machine)
#   .devdata/  the raw Fashion-MNIST .gz files (../shared does not travel)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.devdata/' .git/info/exclude 2>/dev/null || echo '/.devdata/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl .devdata/fashion_mnist
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" -d .whl \
  keras==3.15.1 namex optree pydantic pydantic-core annotated-types typing-inspection
cp ../shared/datasets/fashion_mnist/*.gz .devdata/fashion_mnist/
du -sh .whl .devdata
