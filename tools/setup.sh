#!/usr/bin/env bash
# setup.sh - everything a fresh Debian 12 machine needs to build and test AgentCompress:
# system packages, a Python venv with the reference peers (llama.cpp via llama-cpp-python, the
# gguf package), the test models in the cache directory, and the build itself.
#
#   AC_CACHE   cache directory for the venv and models (default ~/.cache/agentcompress)
#   AC_BUILD   build directory (default ./build)
#   AC_CMAKE_FLAGS  extra CMake flags (e.g. "-DAC_ASAN=ON -DAC_UBSAN=ON")
set -euo pipefail
cd "$(dirname "$0")/.."
AC_CACHE=${AC_CACHE:-$HOME/.cache/agentcompress}
AC_BUILD=${AC_BUILD:-build}
export AC_CACHE

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

# --- system packages ------------------------------------------------------------------------
PKGS="build-essential cmake pkg-config git unzip ca-certificates python3 python3-venv python3-dev
      libpcre2-dev libjansson-dev liblapacke-dev libssl-dev
      libzmq3-dev libprotobuf-c-dev protobuf-c-compiler libhiredis-dev redis-server"
missing=$(for p in $PKGS; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || echo "$p"; done)
if [ -n "$missing" ]; then
  echo "setup: installing $missing" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

# --- Python venv with the reference peers ----------------------------------------------------
# llama-cpp-python builds llama.cpp from source (a few minutes the first time; cached after).
if [ ! -x "$AC_CACHE/venv/bin/python" ]; then
  mkdir -p "$AC_CACHE"
  python3 -m venv "$AC_CACHE/venv"
  "$AC_CACHE/venv/bin/pip" install -q --upgrade pip
fi
CMAKE_ARGS="-DGGML_NATIVE=ON" "$AC_CACHE/venv/bin/pip" install -q -r tests/requirements.txt

# --- models ----------------------------------------------------------------------------------
bash tools/fetch-models.sh

# --- build -----------------------------------------------------------------------------------
cmake -S . -B "$AC_BUILD" -DCMAKE_BUILD_TYPE=Release -DAC_CACHE="$AC_CACHE" ${AC_CMAKE_FLAGS:-} >/dev/null
cmake --build "$AC_BUILD" -j"$(nproc)"
