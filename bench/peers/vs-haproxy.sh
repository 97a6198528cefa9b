#!/usr/bin/env bash
# ringlb (1 pinned worker) vs HAProxy (1 thread), both pinned to CPU $PROXY_CPU, keep-alive to the same
# two nginx origins; wrk and the origins on CPU $LOAD_CPU. Alternates subjects, ROUNDS rounds, and
# prints requests/s and proxy CPU µs per request (utime+stime from /proc) for each run.
# Usage: bench/peers/vs-haproxy.sh [ROUNDS] [DURATION_S] [CONNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}; DUR=${2:-10}; CONNS=${3:-64}
PROXY_CPU=${PROXY_CPU:-0}; LOAD_CPU=${LOAD_CPU:-1}
RINGLB=${RINGLB:-target/release/ringlb}
tick=$(getconf CLK_TCK)
cleanup() { kill $(jobs -p) 2>/dev/null || true; [ -f /tmp/ringlb-bench-origin.pid ] && kill "$(cat /tmp/ringlb-bench-origin.pid 2>/dev/null)" 2>/dev/null || true; }
trap cleanup EXIT
taskset -c "$LOAD_CPU" nginx -c "$PWD/bench/peers/origin-nginx.conf" -g 'daemon off;' &
sleep 0.5
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
run() { # name port pid
  local before after out rps reqs
  wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$2/" >/dev/null 2>&1   # warm-up
  before=$(cpu_ticks "$3")
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DUR}s" "http://127.0.0.1:$2/")
  after=$(cpu_ticks "$3")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  echo "$1 rps=$rps requests=$reqs cpu_us_per_req=$(awk -v t=$((after-before)) -v r="$reqs" -v h="$tick" 'BEGIN{printf "%.2f", t*1e6/h/r}')"
}
taskset -c "$PROXY_CPU" "$RINGLB" run --config bench/configs/ringlb-1worker.toml 2>/dev/null & RPID=$!
taskset -c "$PROXY_CPU" haproxy -f bench/peers/haproxy-keepalive.cfg -db 2>/dev/null & HPID=$!
sleep 1
for r in $(seq "$ROUNDS"); do
  echo "# round $r"
  run ringlb 18080 $RPID
  run haproxy 18081 $HPID
done
