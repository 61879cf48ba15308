#!/usr/bin/env bash
# cluster.sh - a whole AgentCompress cluster on this machine, on loopback: a private redis-server
# (its own port and data directory), the scheduler, a router and N workers over a zoo directory.
#
#   deploy/local/cluster.sh start [--zoo DIR] [--workers N] [--variants a,b,c] [--dir RUNDIR]
#                                 [--port BASE] [--slots S] [--threads T] [--tp K] [--ctx C] [--routers R]
#                                 [--backend cpu|cuda]  (cuda: worker i on GPU i mod $AC_GPUS)
#                                 [--controller FILE]   (routers load it and use policy controller)
#   deploy/local/cluster.sh stop   [--dir RUNDIR]     # stops everything and removes RUNDIR
#   deploy/local/cluster.sh status [--dir RUNDIR]     # acctl status against it
#
# Ports: redis BASE, routers BASE+1.., workers BASE+10... Logs and pids live in RUNDIR
# (default $AC_CACHE/cluster); RUNDIR/env holds AC_REDIS, AC_ROUTER and AC_PREFIX for acctl:
#   . RUNDIR/env && build/bin/acctl status
# Workers hold the given variants in order (default: the zoo's variants, best quality first,
# repeated as needed). `start` returns once every process is ready, or fails and cleans up.
set -euo pipefail
cd "$(dirname "$0")/../.."
AC_CACHE=${AC_CACHE:-$HOME/.cache/agentcompress}
bin=${AC_BIN:-build/bin}
cmd=${1:-}
[ $# -gt 0 ] && shift
zoo=$AC_CACHE/zoo workers=3 variants="" dir=$AC_CACHE/cluster port=6390 slots=4 threads=1 ctx=1024 routers=1 tp=1 backend=cpu
controller=""
while [ $# -gt 0 ]; do
  case $1 in
    --zoo) zoo=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --variants) variants=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --slots) slots=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --tp) tp=$2; shift 2 ;;
    --backend) backend=$2; shift 2 ;;
    --ctx) ctx=$2; shift 2 ;;
    --routers) routers=$2; shift 2 ;;
    --controller) controller=$2; shift 2 ;;
    *) echo "cluster.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

stop() {
  [ -d "$dir" ] || return 0
  # Daemons first (they drain on SIGTERM), redis last; SIGKILL whatever outlives its grace.
  for f in "$dir"/pid.worker.* "$dir"/pid.router.* "$dir"/pid.scheduler "$dir"/pid.redis; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    kill -TERM "$pid" 2>/dev/null || true
  done
  for f in "$dir"/pid.*; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$dir"
}

case $cmd in
  stop) stop; exit 0 ;;
  status) . "$dir/env"; exec "$bin/acctl" status ;;
  start) ;;
  *) sed -n '2,16p' "$0" >&2; exit 2 ;;
esac

[ -d "$zoo" ] || { echo "cluster.sh: zoo directory $zoo not found (build one: acq zoo BASE --out DIR)" >&2; exit 1; }
for b in redis-server; do command -v $b >/dev/null || { echo "cluster.sh: $b not installed" >&2; exit 1; }; done
for b in ac-worker ac-router ac-scheduler acctl; do
  [ -x "$bin/$b" ] || { echo "cluster.sh: $bin/$b not built" >&2; exit 1; }
done
if [ -d "$dir" ] && ls "$dir"/pid.* >/dev/null 2>&1; then
  echo "cluster.sh: a cluster already runs from $dir (stop it first)" >&2
  exit 1
fi
mkdir -p "$dir/redis"
trap 'echo "cluster.sh: start failed; logs in $dir (kept as $dir.failed)" >&2; rm -rf "$dir.failed"; cp -r "$dir" "$dir.failed"; stop' ERR

if [ -z "$variants" ]; then
  # Best quality first: the catalog order the scheduler uses (manifest KLD, else file size).
  variants=$(python3 - "$zoo" <<'PY'
import json, os, sys
z = sys.argv[1]
m = os.path.join(z, "manifest.json")
if os.path.exists(m):
    v = sorted(json.load(open(m))["variants"], key=lambda v: v["quality"].get("kld_mean", 0) or 0)
    print(",".join(x["name"] for x in v))
else:
    f = sorted((x for x in os.listdir(z) if x.endswith(".gguf")), key=lambda x: -os.path.getsize(os.path.join(z, x)))
    print(",".join(x[:-5] for x in f))
PY
)
fi
IFS=, read -r -a vlist <<<"$variants"
router_args=()
if [ -n "$controller" ]; then
  [ -f "$controller" ] || { echo "cluster.sh: controller file $controller not found" >&2; exit 1; }
  router_args=(--controller "$controller" --set policy=controller)
fi

redis_addr=127.0.0.1:$port
prefix=ac:
cat >"$dir/env" <<EOV
export AC_REDIS=$redis_addr
export AC_ROUTER=tcp://127.0.0.1:$((port + 1))
export AC_PREFIX=$prefix
EOV
export AC_REDIS=$redis_addr AC_PREFIX=$prefix

# Private redis: no persistence, loopback only, its own directory.
redis-server --port "$port" --bind 127.0.0.1 --dir "$dir/redis" --save '' --appendonly no \
  --daemonize no --logfile "$dir/redis.log" >/dev/null 2>&1 &
echo $! >"$dir/pid.redis"
for _ in $(seq 100); do redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done
redis-cli -p "$port" ping | grep -q PONG

"$bin/ac-scheduler" --zoo "$zoo" --redis "$redis_addr" >"$dir/scheduler.log" 2>&1 &
echo $! >"$dir/pid.scheduler"
for i in $(seq 0 $((workers - 1))); do
  v=${vlist[$((i % ${#vlist[@]}))]}
  "$bin/ac-worker" --id "w$i" --listen "tcp://127.0.0.1:$((port + 10 + i))" --zoo "$zoo" --variant "$v" \
    --redis "$redis_addr" --slots "$slots" -t "$threads" --tp "$tp" --backend "$backend" --gpu "$(( i % ${AC_GPUS:-1} ))" -c "$ctx" >"$dir/worker.w$i.log" 2>&1 &
  echo $! >"$dir/pid.worker.w$i"
done
for r in $(seq 0 $((routers - 1))); do
  "$bin/ac-router" --id "r$r" --listen "tcp://127.0.0.1:$((port + 1 + r))" --zoo "$zoo" --redis "$redis_addr" \
    --ctx "$ctx" "${router_args[@]}" >"$dir/router.r$r.log" 2>&1 &
  echo $! >"$dir/pid.router.r$r"
done

# Ready = every worker READY in redis and every router answering a ping.
for _ in $(seq 600); do
  ready=$("$bin/acctl" status --json 2>/dev/null | python3 -c '
import json, sys
try:
    s = json.load(sys.stdin)
    print(sum(1 for w in s.get("workers", []) if w.get("state") == "ready"))
except Exception:
    print(0)')
  [ "$ready" -ge "$workers" ] && break
  for f in "$dir"/pid.*; do kill -0 "$(cat "$f")" 2>/dev/null || { echo "cluster.sh: $(basename "$f" | cut -d. -f2-) exited" >&2; false; }; done
  sleep 0.1
done
[ "$ready" -ge "$workers" ] || { echo "cluster.sh: workers not ready after 60 s" >&2; false; }
for r in $(seq 0 $((routers - 1))); do
  AC_ROUTER=tcp://127.0.0.1:$((port + 1 + r)) "$bin/acctl" ping >/dev/null
done
trap - ERR

echo "cluster up (run dir $dir):"
echo "  redis      $redis_addr (prefix $prefix)"
for r in $(seq 0 $((routers - 1))); do echo "  router r$r  tcp://127.0.0.1:$((port + 1 + r))"; done
for i in $(seq 0 $((workers - 1))); do
  echo "  worker w$i  tcp://127.0.0.1:$((port + 10 + i))  ${vlist[$((i % ${#vlist[@]}))]}"
done
echo "  use it:    . $dir/env && $bin/acctl status"
