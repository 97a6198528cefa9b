#!/usr/bin/env bash
# testssl.sh against an https listener at default settings (issue 16).
#
# Starts ringlb with one https listener (only `certificates` set: every other TLS setting is the
# default) on 127.0.0.1:19840, with an openssl-made ECDSA P-256 certificate for localhost signed by
# a throwaway CA that testssl is told to trust (--add-ca), so trust findings are about ringlb, not
# about a self-signed test certificate. The origin is ringlb-bench's built-in backend (or nginx).
# Runs testssl.sh (installed with apt-get when missing), saves its log and JSON under OUT
# (default bench/results/testssl), and prints the HIGH and CRITICAL findings.
#
# Usage: bench/tools/testssl_run.sh [OUT]        (RINGLB=path to pick the binary; default
#        target/release/ringlb, else target/debug/ringlb)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:-$ROOT/bench/results/testssl}
PORT=19840
ORIGIN=19841
RINGLB=${RINGLB:-}
if [ -z "$RINGLB" ]; then
  for b in "$ROOT/target/release/ringlb" "$ROOT/target/debug/ringlb"; do
    if [ -x "$b" ]; then RINGLB=$b; break; fi
  done
fi
[ -x "${RINGLB:-}" ] || { echo "build first: cargo build --release --bins" >&2; exit 2; }

TESTSSL=$(command -v testssl || command -v testssl.sh || true)
if [ -z "$TESTSSL" ]; then
  echo "installing testssl.sh (apt-get)" >&2
  apt-get install -y testssl.sh >/dev/null || { apt-get update >/dev/null && apt-get install -y testssl.sh >/dev/null; }
  TESTSSL=$(command -v testssl || command -v testssl.sh)
fi

mkdir -p "$OUT"
TMP=$(mktemp -d /tmp/ringlb-testssl-XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

# The certificate: a CA valid 10 years, a leaf for localhost / 127.0.0.1 valid 1 year.
cd "$TMP"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key 2>/dev/null
openssl req -new -x509 -key ca.key -days 3650 -subj "/O=ringlb testssl/CN=ringlb testssl CA" \
  -addext "basicConstraints=critical,CA:true" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out ca.crt
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out site.key 2>/dev/null
openssl req -new -key site.key -subj "/O=ringlb testssl/CN=localhost" -out site.csr
printf 'basicConstraints=CA:false\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n' > ext.cnf
openssl x509 -req -in site.csr -CA ca.crt -CAkey ca.key -days 365 -extfile ext.cnf \
  -set_serial 0x$(openssl rand -hex 8) -out site.crt 2>/dev/null

# The origin.
BENCH=$(dirname "$RINGLB")/ringlb-bench
if [ -x "$BENCH" ]; then
  "$BENCH" backend --bind 127.0.0.1:$ORIGIN >origin.log 2>&1 &
else
  printf 'worker_processes 1;\nerror_log %s/o.err crit;\npid %s/o.pid;\nevents {}\nhttp { access_log off; server { listen 127.0.0.1:%s; location / { return 200 "ok\\n"; } } }\n' \
    "$TMP" "$TMP" $ORIGIN > origin.conf
  nginx -p "$TMP" -c "$TMP/origin.conf" -g "daemon off;" >origin.log 2>&1 &
fi
PIDS+=($!)

cat > ringlb.toml <<EOF
[runtime]
workers = 1

[[listener]]
name = "websecure"
bind = "127.0.0.1:$PORT"
protocol = "https"
target_group = "app"
  [listener.tls]
  certificates = [{ cert = "$TMP/site.crt", key = "$TMP/site.key" }]

[[target_group]]
name = "app"
targets = ["127.0.0.1:$ORIGIN"]
EOF
"$RINGLB" run --config ringlb.toml >ringlb.log 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
  curl -s -o /dev/null --cacert ca.crt "https://localhost:$PORT/" && break
  sleep 0.1
done
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert ca.crt "https://localhost:$PORT/")
[ "$code" = 200 ] || { echo "ringlb does not answer over https ($code):" >&2; cat ringlb.log >&2; exit 1; }

echo "ringlb: $RINGLB ($("$RINGLB" --version 2>/dev/null || true))"
echo "testssl: $TESTSSL ($("$TESTSSL" --version 2>/dev/null | grep -m1 -o 'testssl.sh *[0-9][^ ]*' || true))"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
LOG=$OUT/testssl-$STAMP.log
JSON=$OUT/testssl-$STAMP.json
set +e
"$TESTSSL" --quiet --color 0 --warnings off --add-ca "$TMP/ca.crt" \
  --logfile "$LOG" --jsonfile "$JSON" "https://localhost:$PORT/" >/dev/null 2>"$TMP/testssl.err"
rc=$?
set -e
echo "testssl exit status $rc (its number of findings at or above its warning level, when < 50)"
echo "full output: $LOG"
echo "JSON:        $JSON"
[ -s "$JSON" ] || { echo "no JSON written:" >&2; cat "$TMP/testssl.err" >&2; exit 1; }

python3 - "$JSON" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
items = data if isinstance(data, list) else data.get("scanResult", [])
counts = {}
for f in items:
    counts[f.get("severity", "?")] = counts.get(f.get("severity", "?"), 0) + 1
print("findings by severity:", ", ".join("%s %d" % (k, v) for k, v in sorted(counts.items())))
bad = [f for f in items if f.get("severity") in ("HIGH", "CRITICAL")]
print("HIGH/CRITICAL findings: %d" % len(bad))
for f in bad:
    print("  %-8s %-28s %s" % (f["severity"], f.get("id", "?"), f.get("finding", "")))
PY
