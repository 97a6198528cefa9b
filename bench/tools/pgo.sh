#!/usr/bin/env bash
# Profile-guided (PGO) build of ringlb, the build to deploy: an instrumented build serves a
# training load (HTTP/2 and HTTP/1.1 over TLS, h2c, HTTP/1.1 keep-alive and a connection per
# request, rules, an access log, a TCP listener, HTTP/2 and gRPC to HTTP/2 targets, all against
# `ringlb-bench backend` origins), then the release build is optimised with the profile it
# recorded. Each build takes about 2.5 minutes on 2 cores, the training under a minute.
#
#   bench/tools/pgo.sh            -> target/pgo/release/ringlb
#   bench/tools/pgo.sh --deb      -> the same, then target/debian/ringlb_*.deb with it (cargo-deb)
#
# ringlb-bench is not built with the profile (it is the load generator, and ringlb's profile would
# mark its own paths cold): the package takes the plain release build of it.
#
# Needs: rustup's llvm-tools (llvm-profdata matching rustc's LLVM; installed here if missing),
# h2load and wrk (apt-get install nghttp2-client wrk) and openssl; it brings the plain release
# build of ringlb-bench up to date itself. Runs on CPUs 0 (ringlb) and 1 (load and origins), on
# ports 19501-19515.
# Compare the result with the plain release build, e.g.
#   bench/tools/h2_peers.py --ringlb target/pgo/release/ringlb --baseline target/release/ringlb
#   bench/tools/user_instructions.py --ringlb target/pgo/release/ringlb
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DEB=0
case "${1:-}" in
  --deb) DEB=1 ;;
  "") ;;
  *) echo "usage: bench/tools/pgo.sh [--deb]" >&2; exit 2 ;;
esac
# A process left on one of these ports would serve the training in place of the ones started
# here (and a leftover origin answers for the one that refuses to start beside it).
for p in 19501 19502 19503 19504 19510 19511 19512 19513 19514 19515; do
  if (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then
    echo "pgo.sh: 127.0.0.1:$p is already in use (a process left from an earlier run? \`ss -ltnp 'sport = :$p'\` names it): stop it first" >&2
    exit 1
  fi
done
rustup component add llvm-tools >/dev/null 2>&1 || true
SYSROOT=$(rustc --print sysroot)
PROFDATA=$(ls "$SYSROOT"/lib/rustlib/*/bin/llvm-profdata 2>/dev/null | head -1 || true)
[ -x "$PROFDATA" ] || { echo "llvm-profdata not found (rustup component add llvm-tools)" >&2; exit 1; }
for t in h2load wrk openssl; do
  command -v $t >/dev/null || { echo "$t is needed" >&2; exit 1; }
done
BENCH=$ROOT/target/release/ringlb-bench
# Up to date with the tree (a no-op when it is): the origins, and what --deb packages.
cargo build --release --bin ringlb-bench --quiet
WORK=$(mktemp -d /tmp/ringlb-pgo.XXXXXX)
# A fixed path: the instrumented build's flags stay the same from run to run, so it is rebuilt
# only where the code changed. The profile it feeds has a new path each time, so the optimised
# build is never left built with an older profile.
DATA=$ROOT/target/pgo-gen/profiles
trap 'pkill -f "$WORK" 2>/dev/null || true; kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
fail() { echo "pgo.sh: $*" >&2; exit 1; }

echo "== instrumented build (target/pgo-gen)"
RUSTFLAGS="-Cprofile-generate=$DATA" CARGO_TARGET_DIR=$ROOT/target/pgo-gen \
  cargo build --release --bin ringlb --quiet
# Only the training run's profile counts (not the build scripts', nor the config check's).
rm -rf "$DATA"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/k.pem" \
  -out "$WORK/c.pem" -days 2 -subj /CN=localhost 2>/dev/null
cat > "$WORK/ringlb.toml" <<CONF
# The paths a deployment runs hot: HTTP/2 and HTTP/1.1 over TLS, h2c, plain HTTP/1.1 (keep-alive
# and a connection per request) through rules and with an access log, a TCP listener, and HTTP/2
# and gRPC to HTTP/2 targets.
[runtime]
workers = 1
[[listener]]
name = "tls"
bind = "127.0.0.1:19510"
protocol = "https"
target_group = "app"
  [listener.tls]
  certificates = [{ cert = "$WORK/c.pem", key = "$WORK/k.pem" }]
[[listener]]
name = "plain"
bind = "127.0.0.1:19511"
protocol = "http"
target_group = "app"
http2 = true
[[listener]]
name = "routed"
bind = "127.0.0.1:19512"
protocol = "http"
target_group = "app"
access_log = "$WORK/access.log"
  [[listener.rule]]
  priority = 10
  path = ["/api/*"]
  method = ["GET"]
  forward = "api"
  [[listener.rule]]
  priority = 20
  path = ["/robots.txt"]
  fixed_response = { status = 200, content_type = "text/plain", body = "User-agent: *\\nDisallow: /\\n" }
[[listener]]
name = "tcp"
bind = "127.0.0.1:19513"
protocol = "tcp"
target_group = "tcp"
[[listener]]
name = "h2up"
bind = "127.0.0.1:19514"
protocol = "http"
http2 = true
target_group = "h2up"
[[listener]]
name = "grpc"
bind = "127.0.0.1:19515"
protocol = "http"
http2 = true
target_group = "grpc"
[[target_group]]
name = "app"
targets = ["127.0.0.1:19501", "127.0.0.1:19502"]
algorithm = "round_robin"
max_idle_per_target = 1024
[[target_group]]
name = "api"
targets = ["127.0.0.1:19501", "127.0.0.1:19502"]
algorithm = "least_outstanding"
max_idle_per_target = 1024
[[target_group]]
name = "tcp"
protocol = "tcp"
targets = ["127.0.0.1:19501", "127.0.0.1:19502"]
[[target_group]]
name = "h2up"
protocol_version = "http2"
targets = ["127.0.0.1:19503", "127.0.0.1:19504"]
[[target_group]]
name = "grpc"
protocol_version = "grpc"
targets = ["127.0.0.1:19503", "127.0.0.1:19504"]
CONF
# One gRPC message (5-byte prefix, 10 bytes), which the HTTP/2 origins echo.
printf '\000\000\000\000\0120123456789' > "$WORK/grpc.msg"
for p in 19501 19502; do
  taskset -c 1 "$BENCH" backend --bind 127.0.0.1:$p >/dev/null 2>&1 &
done
for p in 19503 19504; do
  taskset -c 1 "$BENCH" backend --h2 --bind 127.0.0.1:$p >/dev/null 2>&1 &
done
LLVM_PROFILE_FILE=$WORK/check.profraw "$ROOT/target/pgo-gen/release/ringlb" check --config "$WORK/ringlb.toml" >/dev/null
echo "== training"
taskset -c 0 "$ROOT/target/pgo-gen/release/ringlb" run --config "$WORK/ringlb.toml" >"$WORK/ringlb.log" 2>&1 &
RPID=$!
up=0
for _ in $(seq 50); do
  kill -0 $RPID 2>/dev/null || fail "the instrumented ringlb exited: $(tail -5 "$WORK/ringlb.log")"
  if (exec 3<>/dev/tcp/127.0.0.1/19513) 2>/dev/null; then up=1; break; fi
  sleep 0.2
done
[ $up = 1 ] || fail "the instrumented ringlb did not listen within 10 s"
# Each load must be served whole: a profile of error paths would optimise the wrong code.
load() {
  echo "  $*"
  local out
  out=$(taskset -c 1 "$@" 2>&1) || fail "$1 failed: $out"
  if [ "$1" = wrk ]; then
    echo "$out" | grep -E "requests in"
    ! echo "$out" | grep -qE "Non-2xx|Socket errors" || fail "wrk saw errors: $out"
  else
    echo "$out" | grep -E "^requests:"
    echo "$out" | grep -qE " 0 failed, 0 errored, 0 timeout" || fail "h2load saw errors: $out"
  fi
}
load h2load -n 300000 -c 16 -m 32 https://127.0.0.1:19510/
load h2load --h1 -n 50000 -c 16 https://127.0.0.1:19510/
load h2load -n 100000 -c 16 -m 32 http://127.0.0.1:19511/
load h2load --h1 -n 300000 -c 64 http://127.0.0.1:19511/
load wrk -t1 -c16 -d5s -H "Connection: close" http://127.0.0.1:19511/
load h2load --h1 -n 100000 -c 64 http://127.0.0.1:19512/api/x http://127.0.0.1:19512/www http://127.0.0.1:19512/robots.txt
load h2load --h1 -n 100000 -c 16 http://127.0.0.1:19513/
load h2load -n 100000 -c 16 -m 32 http://127.0.0.1:19514/
load h2load -n 50000 -c 16 -m 32 -d "$WORK/grpc.msg" -H "content-type: application/grpc" \
  -H "te: trailers" http://127.0.0.1:19515/bench.Echo/Call
kill -TERM $RPID
wait $RPID || fail "the instrumented ringlb did not exit cleanly (no profile written): $(tail -5 "$WORK/ringlb.log")"
ls "$DATA"/*.profraw >/dev/null 2>&1 || fail "no profile in $DATA"
"$PROFDATA" merge -o "$WORK/ringlb.profdata" "$DATA"

echo "== optimised build (target/pgo)"
RUSTFLAGS="-Cprofile-use=$WORK/ringlb.profdata" CARGO_TARGET_DIR=$ROOT/target/pgo \
  cargo build --release --bin ringlb --quiet
cp "$WORK/ringlb.profdata" "$ROOT/target/pgo/ringlb.profdata"
echo "built target/pgo/release/ringlb (profile: target/pgo/ringlb.profdata)"
if [ $DEB = 1 ]; then
  cp "$BENCH" "$ROOT/target/pgo/release/ringlb-bench"
  CARGO_TARGET_DIR=$ROOT/target/pgo cargo deb --no-build --output "$ROOT/target/debian/"
fi
