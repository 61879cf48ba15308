#!/usr/bin/env bash
# test.sh - set up (tools/setup.sh), build, and run the whole test suite with ctest; then build
# again with AddressSanitizer + UndefinedBehaviorSanitizer and rerun every test that exercises
# our code on its own (the C unit tests, malformed inputs, tokenizers, GGUF I/O, the golden
# text). The two llama.cpp logit comparisons run only in the first pass: they are slow under
# the sanitizers and test numerics, not memory safety.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${AC_BUILD:-build}
bash tools/setup.sh
ctest --test-dir "$build" --output-on-failure "$@"

AC_CACHE=${AC_CACHE:-$HOME/.cache/agentcompress}
cmake -S . -B "$build-asan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAC_ASAN=ON -DAC_UBSAN=ON \
  -DAC_CACHE="$AC_CACHE" >/dev/null
cmake --build "$build-asan" -j"$(nproc)"
ctest --test-dir "$build-asan" --output-on-failure -E "reference_llamacpp|convert_hf" "$@"
