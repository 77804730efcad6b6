#!/usr/bin/env bash
# The benchmark suite at full CIFAR scale on a lent GPU (the `device` tool), in at most 8 minutes.
#
# Prepare on the development machine (the GPU machine reaches no registry; its image has jax,
# flax, optax, orbax-checkpoint, chex, absl-py, etils, tqdm, matplotlib and pillow):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#     ml-collections==1.1.0 tensorboardX==2.6.5 tensorflow-datasets==4.9.10 array-record==0.8.6 \
#     distrax==0.1.9 tfp-nightly==0.26.0.dev20261027 dm-tree promise simple-parsing wrapt \
#     toml termcolor tensorflow-metadata protobuf docstring-parser immutabledict
# Run (device tool): command `bash benchmarks/device.sh`, carry [".whl"], timeout_s 540.
# Writes the 'gpu' section of BENCHMARKS.md and benchmarks/results/gpu.json; both come back
# under $OUT too.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
# Flows, classifier steps (f32 and bf16), perturbation steps at full scale, compile vs depth.
timeout 480 python3 -m benchmarks.run --sections=flow,classifier,augment,depth
rc=$?
if [ -n "${OUT:-}" ]; then
  cp BENCHMARKS.md "$OUT/" 2>/dev/null
  cp benchmarks/results/*.json "$OUT/" 2>/dev/null
fi
exit $rc
