#!/usr/bin/env bash
# gpu.sh - the GPU benchmark of issue 6, on a machine with an NVIDIA GPU and an AC_CUDA build:
#   1. bandwidths: ac-gpu-membw (device read GB/s: the decode bound; pinned host->device GB/s:
#      the reload bound)
#   2. per variant of ZOO (every ZOO/*.gguf): greedy text on the GPU equals the CPU's; decode and
#      prefill tokens/s (median of RUNS runs); decode as a share of the HBM bound (measured device
#      read bandwidth / bytes of weights read per token); upload time against the PCIe bound.
#
#   bash bench/gpu.sh ZOO [BUILD]      (RUNS=5 GPU=0 N=128 by default)
# Writes a Markdown table on stdout.
set -euo pipefail
zoo=${1:?usage: bench/gpu.sh ZOO [BUILD]}
build=${2:-build-cuda}
runs=${RUNS:-5} gpu=${GPU:-0} n=${N:-128}
acq=$build/bin/acq
prompt="Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends."
# A long prompt for prefill: the short one repeated (about 500 tokens).
long=$(for i in $(seq 1 20); do printf '%s ' "$prompt"; done)

bw=$("$build/bin/ac-gpu-membw" "$gpu")
read_gbs=$(sed -E 's/.*"device_read_gbs": ([0-9.]+).*/\1/' <<<"$bw")
h2d_gbs=$(sed -E 's/.*"h2d_gbs": ([0-9.]+).*/\1/' <<<"$bw")
echo "bandwidths: $bw"
echo
echo "| variant | MiB | same text as CPU | decode tok/s | HBM bound tok/s | % of bound | prefill tok/s | upload ms | PCIe bound ms |"
echo "|---|---:|---|---:|---:|---:|---:|---:|---:|"

median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
for f in "$zoo"/*.gguf; do
  name=$(basename "$f" .gguf)
  bytes=$(stat -c %s "$f")
  cpu_text=$("$acq" run "$f" -p "$prompt" -n 48 2>/dev/null || true)
  gpu_text=$("$acq" run "$f" -p "$prompt" -n 48 --backend cuda --gpu "$gpu" 2>/dev/null || echo "(failed)")
  same=no
  [ "$cpu_text" = "$gpu_text" ] && same=yes
  dec=() pre=() up=()
  for r in $(seq 1 "$runs"); do
    log=$("$acq" run "$f" -p "$prompt" -n "$n" --ignore-eos --backend cuda --gpu "$gpu" 2>&1 >/dev/null) || { echo "| $name | failed: $(tail -1 <<<"$log") |"; continue 2; }
    dec+=("$(sed -nE 's/.*decode [0-9]+ tokens in [0-9.]+ ms \(([0-9.]+) tok\/s\).*/\1/p' <<<"$log")")
    up+=("$(sed -nE 's/.*upload [0-9.]+ MiB to GPU [0-9]+ in ([0-9.]+) ms.*/\1/p' <<<"$log")")
    log=$("$acq" run "$f" -p "$long" -n 1 --backend cuda --gpu "$gpu" 2>&1 >/dev/null)
    pre+=("$(sed -nE 's/.*prefill [0-9]+ tokens in [0-9.]+ ms \(([0-9.]+) tok\/s\).*/\1/p' <<<"$log")")
  done
  d=$(printf '%s\n' "${dec[@]}" | median)
  p=$(printf '%s\n' "${pre[@]}" | median)
  u=$(printf '%s\n' "${up[@]}" | median)
  # Bytes read per decoded token: every weight once (the embedding is one row, but a tied output
  # reads all of it), so the file size is the bound's numerator.
  awk -v name="$name" -v b="$bytes" -v same="$same" -v d="$d" -v p="$p" -v u="$u" -v rb="$read_gbs" -v hb="$h2d_gbs" 'BEGIN {
    bound = rb * 1e9 / b
    printf "| %s | %.1f | %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |\n", name, b / 1048576, same, d, bound,
           100 * d / bound, p, u, b / (hb * 1e9) * 1e3 }'
done
