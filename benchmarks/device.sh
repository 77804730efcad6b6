#!/usr/bin/env bash
# The benchmark suite at full CIFAR scale on a lent GPU (the `device` tool), in at most 8 minutes.
#
# Prepare on the development machine (the GPU machine reaches no registry; its image has jax,
# flax, optax, orbax-checkpoint, chex, absl-py, etils, tqdm, matplotlib and pillow):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux_2_28_x86_64 -d .whl \
#     ml-collections==1.1.0 tensorboardX==2.6.5 tensorflow-datasets==4.9.10 array-record==0.8.6 \
#     distrax==0.1.9 tfp-nightly==0.26.0.dev20261027 dm-tree simple-parsing wrapt toml \
#     termcolor tensorflow-metadata protobuf docstring-parser immutabledict importlib-resources==7.1.0 \
#     decorator gast googleapis-common-protos
#   python3 -m pip wheel --no-deps -w .whl promise    # pure Python, published as a source archive only
# Run (device tool): command `bash benchmarks/device.sh`, carry [".whl"], timeout_s 560.
# Writes the 'gpu' section of BENCHMARKS.md and benchmarks/results/gpu.json; both come back
# under $OUT too. `bash benchmarks/device.sh mfu` (timeout_s 300) instead prints the ResNet-18 and
# A-LA steps' utilisation of the bf16 peak at batches 512-2048 (benchmarks/mfu.py).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
python3 -m pip list 2>/dev/null | grep -i -E "^(jax|jaxlib|flax|optax|orbax-checkpoint|chex|numpy) "
python3 -c "import benchmarks.run" || { echo "a package is missing: add its wheel to .whl"; exit 1; }
if [ "${1:-}" = mfu ]; then
  timeout 270 python3 -m benchmarks.mfu
  exit $?
fi
# One process per section, most wanted first (classifier and A-LA steps: the MFU targets), each
# keeping the sections before it (benchmarks/run.py merges into results/gpu.json), so a section
# that fails or runs out of time loses only itself. All within 480 s.
deadline=$((SECONDS + 480)) rc=0
for section in classifier augment flow depth; do
  left=$((deadline - SECONDS))
  [ "$left" -lt 30 ] && { echo "no time left for $section"; rc=1; break; }
  echo "== $section (at most $left s)"
  timeout "$left" python3 -m benchmarks.run --sections="$section" || rc=$?
  if [ -n "${OUT:-}" ]; then
    cp BENCHMARKS.md "$OUT/" 2>/dev/null
    cp benchmarks/results/*.json "$OUT/" 2>/dev/null
  fi
done
exit $rc
