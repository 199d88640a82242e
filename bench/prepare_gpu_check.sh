#!/usr/bin/env bash
# Run here, before a GPU check on a lent device machine (nothing can be fetched there, and only the checkout
# travels): copies the public IF configs into ./shared/if_configs and downloads the pure-Python wheel that the
# device image lacks (diffusers, at the version installed here) into ./.whl. Both folders are git-ignored.
# Then run `bash bench/gpu_check.sh` there with carry [".whl", "shared"] (BENCHMARKS.md says how).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
src=${IF_CONFIG_DIR:-../shared/if_configs}
[ -f "$src/IF-I-XL-v1.0_unet_config.json" ] || { echo "no IF configs in $src: set IF_CONFIG_DIR" >&2; exit 2; }
mkdir -p shared/if_configs .whl
cp -f "$src"/*.json shared/if_configs/
version=$("$PY" -c "import diffusers; print(diffusers.__version__)")
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  -d .whl "diffusers==$version"
ls -l shared/if_configs .whl
