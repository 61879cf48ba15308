#!/usr/bin/env bash
# test.sh - set up (tools/setup.sh), build, and run the whole test suite with ctest; then build
# again with AddressSanitizer + UndefinedBehaviorSanitizer and rerun the tests that exercise
# memory safety: every C unit test and the tests that feed our parsers and engine real and
# malformed input (GGUF files, tokenizers, the golden text, per-layer shapes, low-rank files),
# and the cluster end to end (garbage frames and 100 concurrent tasks against ASan daemons).
# The long numeric pipelines (llama.cpp comparisons, quantize/prune/lowrank/zoo/eval runs) run
# only in the first pass: they test numerics, and under the sanitizers they would triple CI time.
# Last, where the CUDA toolkit is installed, the CUDA backend is built (-DAC_CUDA=ON: it must
# compile and link) and its C tests run: on a machine without a GPU the GPU tests skip and the
# CPU ones (tensor parallelism among them) run against the CUDA build's library.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${AC_BUILD:-build}
bash tools/setup.sh
ctest --test-dir "$build" --output-on-failure "$@"

AC_CACHE=${AC_CACHE:-$HOME/.cache/agentcompress}
cmake -S . -B "$build-asan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAC_ASAN=ON -DAC_UBSAN=ON \
  -DAC_CACHE="$AC_CACHE" >/dev/null
cmake --build "$build-asan" -j"$(nproc)"
ctest --test-dir "$build-asan" --output-on-failure \
  -R "^test_|bad_input|gguf_io|stories|tokenizer|quant_compat|per_layer_shapes|lowrank_format|py_test_cluster$|py_test_cluster_tp$" "$@"

nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
if [ -x "$nvcc" ]; then
  cmake -S . -B "$build-cuda" -DCMAKE_BUILD_TYPE=Release -DAC_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" \
    -DAC_CACHE="$AC_CACHE" >/dev/null
  cmake --build "$build-cuda" -j"$(nproc)"
  ctest --test-dir "$build-cuda" --output-on-failure -R "^test_" "$@"
else
  echo "test.sh: no CUDA toolkit (nvcc): the CUDA backend was not built" >&2
fi
