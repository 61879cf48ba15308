#!/usr/bin/env bash
# demo.sh - the main job for now: set up, build, and run the engine on the demo models
# (stories260K from ../shared, SmolLM2-135M-Instruct Q4_1 and its F16 form).
set -euo pipefail
cd "$(dirname "$0")/.."
AC_CACHE=${AC_CACHE:-$HOME/.cache/agentcompress}
export AC_CACHE
bash tools/setup.sh
acq=${AC_BUILD:-build}/bin/acq
shared=${AC_SHARED:-../shared}
models=$AC_CACHE/models
threads=$(nproc)
speed=$(mktemp)
trap 'rm -f "$speed"' EXIT
# Generated text goes to stdout; acq's speed line (stderr) is shown after it, on its own line.
run() { $acq run "$@" 2>"$speed"; echo; cat "$speed"; }

echo "== stories260K: llama2.c checkpoint -> GGUF, greedy from BOS"
$acq convert --llama2c "$shared/models/stories260K/stories260K.bin" \
  --tokenizer "$shared/models/stories260K/tok512.bin" -o "$models/stories260K.gguf"
run "$models/stories260K.gguf" -p "" -n 200

echo "== SmolLM2-135M-Instruct Q4_1 -> F16 (every tensor dequantized: the zoo's full model)"
[ -f "$models/SmolLM2-135M-Instruct.F16.gguf" ] ||
  $acq convert --gguf "$models/SmolLM2-135M-Instruct.Q4_1.gguf" --type f16 -o "$models/SmolLM2-135M-Instruct.F16.gguf"
for v in Q4_1 F16; do
  echo "== SmolLM2 $v, chat, greedy, $threads threads"
  run "$models/SmolLM2-135M-Instruct.$v.gguf" --chat -t "$threads" -n 96 \
    -p "Explain in two sentences why the sky is blue."
done

echo "== the compression zoo of SmolLM2 (all variants, quality vs f16, speed, modelled cost)"
$acq zoo "$models/SmolLM2-135M-Instruct.Q4_1.gguf" --out "$AC_CACHE/zoo" -t "$threads"
echo "manifest: $AC_CACHE/zoo/manifest.json"

echo "== a local cluster on the zoo: redis, scheduler, router, 3 workers (f16, int8, int4)"
bin=${AC_BUILD:-build}/bin
rundir=$AC_CACHE/demo-cluster
bash deploy/local/cluster.sh stop --dir "$rundir"
bash deploy/local/cluster.sh start --zoo "$AC_CACHE/zoo" --workers 3 --variants f16,int8,int4 --dir "$rundir" \
  --port 6390 --threads 1
trap 'bash deploy/local/cluster.sh stop --dir "$rundir"; rm -f "$speed"' EXIT
. "$rundir/env"
for v in f16 int4; do
  echo "-- acctl submit --chat --variant $v"
  $bin/acctl submit --chat --variant "$v" -n 64 -p "Name three colours of the rainbow."
  echo
done
echo "-- demand moves to int2, which no worker holds: the scheduler reloads the lowest-priority worker"
# The workers have just started; let the scheduler move them at once (default residency is 10 s).
$bin/acctl policy set sched.min_residency_s 0
for i in 1 2 3 4 5 6; do $bin/acctl submit --variant int2 -n 8 -p "2 + 2 =" >/dev/null 2>&1; done
for _ in $(seq 100); do
  $bin/acctl status --json | python3 -c 'import json, sys
s = json.load(sys.stdin)
sys.exit(not any(w["variant"] == "int2" and w["state"] == "ready" for w in s["workers"]))' && break
  sleep 0.2
done
$bin/acctl submit --variant int2 -n 8 -p "2 + 2 ="
echo
$bin/acctl status
$bin/acctl stats

echo "== the complexity controller on a short real run: workload -> labels -> controller -> acbench"
ctl=$AC_CACHE/demo-controller
mkdir -p "$ctl"
python3 bench/workloads/generate.py --workflows 4 -o "$ctl/workload.jsonl"
$acq label "$AC_CACHE/zoo" "$ctl/workload.jsonl" -o "$ctl/labels.jsonl" -t "$threads" --slots 8
$acq train-controller "$ctl/labels.jsonl" -o "$ctl/ctrl.acc" --zoo "$AC_CACHE/zoo" --workload "$ctl/workload.jsonl" \
  --steps 100 --quiet
# From the labels (every policy), then through the running cluster (its workers hold f16, int2
# and int4 now; the scheduler reloads them as the policies' demand moves).
$bin/acctl policy reset sched.min_residency_s >/dev/null
$bin/acbench --labels "$ctl/labels.jsonl" --workload "$ctl/workload.jsonl" --zoo "$AC_CACHE/zoo" \
  --controller "$ctl/ctrl.acc" --out "$ctl/report" --cluster "$AC_ROUTER" --redis "$AC_REDIS" \
  --replay all-full,uniform-int4,ctrl --replay-tasks 12 --concurrency 3
echo "report: $ctl/report/report.md (plot: cost_vs_success.svg)"
