#!/usr/bin/env bash
# Run here, before a GPU check on a lent device machine (nothing can be fetched there, and only the checkout
# travels): copies the public IF configs into ./shared/if_configs, downloads the wheels that the device image lacks
# (diffusers, pydantic and pydantic-settings, at the versions installed here) into ./.whl, and unpacks bitsandbytes (for the 8-bit T5
# placement) into ./.whl/bnb with only its CUDA 13 and CPU libraries (the whole wheel is about 43 MB; the device
# machine's torch is a CUDA 13.0 build; BNB_CUDA=130 names another). Both folders are git-ignored.
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
# core.operations and core.settings need pydantic and pydantic-settings, which the device image lacks (bench_flow
# failed there without them): the versions installed here, as cp312 wheels
pins=$("$PY" -c 'from importlib.metadata import version as v; print(" ".join(f"{n}=={v(n)}" for n in (
  "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "pydantic-settings", "python-dotenv")))')
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $pins
if [ "${SKIP_BNB:-0}" != 1 ]; then
  tmp=$(mktemp -d)
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    -d "$tmp" "bitsandbytes${BNB_VERSION:+==$BNB_VERSION}"
  rm -rf .whl/bnb
  mkdir -p .whl/bnb
  "$PY" - "$tmp" "${BNB_CUDA:-130}" <<'EOF'
import sys, zipfile
from pathlib import Path

tmp, cuda = Path(sys.argv[1]), sys.argv[2]
wheel = next(tmp.glob("bitsandbytes-*.whl"))
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        lib = name.rsplit("/", 1)[-1]
        if lib.startswith("libbitsandbytes_") and lib not in (f"libbitsandbytes_cuda{cuda}.so", "libbitsandbytes_cpu.so"):
            continue
        z.extract(name, ".whl/bnb")
print(f"unpacked {wheel.name} into .whl/bnb (CUDA {cuda} and CPU libraries only)")
EOF
  rm -rf "$tmp"
fi
du -sh .whl shared/if_configs
ls -l shared/if_configs .whl
