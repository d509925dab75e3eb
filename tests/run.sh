#!/usr/bin/env bash
# Set up and run the whole test suite on a CPU machine (what CI runs through .ci/run).
# Installs: the CPU build of torch 2.13.0, this package with its dev and serve extras, a real Triton server
# (nvidia-pytriton's binary), and, when the machine has no nvcc, NVIDIA's CUDA compiler wheels so the
# plugin's kernels are compile-tested.
set -euo pipefail
cd "$(dirname "$0")/.."

export PIP_DISABLE_PIP_VERSION_CHECK=1
python3 -m pip install -q "torch==2.13.0"
python3 -m pip install -q -e ".[dev,serve]"
# A real Triton server for tests/test_triton.py: nvidia-pytriton's binary, --no-deps so its numpy<2 pin stays out;
# its Python backend stub gets numpy<2 in a folder of its own.
python3 -m pip install -q --no-deps "nvidia-pytriton==0.7.0"
python3 -m runtime.serve --setup >/dev/null
if ! command -v nvcc >/dev/null 2>&1 && [ -z "${CUDA_HOME:-}" ]; then
    python3 -m pip install -q -e ".[cuda-build]"
fi

# Two workers for two cores; one BLAS/OpenMP thread each so they don't fight over the cores.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
python3 -m ruff check trainer export trt_plugins runtime tests benchmarks setup.py
# The TensorRT layer cannot run here: type-check it (its API names are pinned by tests/test_trt_api_names.py).
python3 -m mypy --ignore-missing-imports --follow-imports=silent \
    runtime/backends/tensorrt.py runtime/cuda_env.py runtime/engine_sidecar.py export/trt_build.py export/to_trt.py
exec python3 -m pytest -n 2 --dist loadfile -q "$@" tests
