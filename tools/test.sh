#!/usr/bin/env bash
# test.sh - set up (tools/setup.sh), build, and run the whole test suite with ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
ctest --test-dir "${AC_BUILD:-build}" --output-on-failure "$@"
