#!/usr/bin/env bash
# types.sh - the per-type benchmark: kernel streaming speed vs memory bandwidth, and decode/prefill
# speed of every quantization type, ours vs llama.cpp on the same file and threads.
#
# The decode table uses a random-weight LLaMA whose rows are multiples of 256 (bench/wide_model.py)
# so every K-quant really applies; the demo model's 576-wide rows would make them fall back.
# A second table runs the demo model's zoo variants that llama.cpp can read.
#
# usage: bench/types.sh [OUTDIR]   (default $AC_CACHE/bench-types; report in OUTDIR/report.md)
# env:   RUNS (5), THREADS (1,2), TYPES (space separated), MIB (256, kernel bench matrix size)
set -euo pipefail
cd "$(dirname "$0")/.."
AC_CACHE=${AC_CACHE:-$HOME/.cache/agentcompress}
out=${1:-$AC_CACHE/bench-types}
py=$AC_CACHE/venv/bin/python
bin=${AC_BIN:-build/bin}
runs=${RUNS:-5}
threads=${THREADS:-1,2}
types=${TYPES:-f16 q8_0 q6_k q5_k q5_1 q5_0 q4_k q4_1 q4_0 q3_k q2_k}
mkdir -p "$out"
base=$AC_CACHE/models/SmolLM2-135M-Instruct.F16.gguf
[ -f "$base" ] || { echo "types.sh: $base missing; run tools/demo.sh first" >&2; exit 1; }

[ -f "$out/wide.f16.gguf" ] || "$py" bench/wide_model.py "$base" "$out/wide.f16.gguf"
files=()
for t in $types; do
  f=$out/wide.$t.gguf
  [ "$t" = f16 ] || [ -f "$f" ] || "$bin/acq" quantize "$out/wide.f16.gguf" "$f" "$t" --no-keep-embd -t "$(nproc)"
  files+=("$f")
done

{
  echo "# Per-type benchmark ($(date -u +%F), $(nproc) cores)"
  echo
  echo "## Kernels, one thread: weights streamed per second (matrix of ${MIB:-256} MiB, far beyond the caches)"
  echo
  echo "memory read bandwidth, one thread (ac-membw): $("$bin/ac-membw" 1 "${MIB:-256}" 2>/dev/null) GB/s"
  echo
  echo '```'
  "$bin/ac-bench-quant" "${MIB:-256}"
  echo '```'
  echo
  echo "## Decode and prefill per type, wide random model (dim 1024, ffn 2816, 12 layers), ours vs llama.cpp"
  echo
  "$py" bench/engine_vs_llamacpp.py "${files[@]}" --threads "$threads" --runs "$runs"
  zoo=$AC_CACHE/zoo
  if [ -f "$zoo/manifest.json" ]; then
    echo
    echo "## The demo model's zoo variants that llama.cpp reads (int2 and lowrank use our extensions)"
    echo
    "$py" bench/engine_vs_llamacpp.py "$zoo"/f16.gguf "$zoo"/int8.gguf "$zoo"/int4.gguf "$zoo"/pruned.gguf \
      "$zoo"/pruned-int4.gguf --threads "$threads" --runs "$runs"
  fi
} 2>"$out/bench.log" | tee "$out/report.md"
echo "report: $out/report.md" >&2
