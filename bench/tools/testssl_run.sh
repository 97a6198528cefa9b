#!/usr/bin/env bash
# testssl.sh against an https listener at default settings (issue 16).
#
# Starts ringlb with one https listener (only `certificates` set: every other TLS setting is the
# default) on 127.0.0.1:19840, with an openssl-made ECDSA P-256 certificate for localhost signed by
# a throwaway CA that testssl is told to trust (--add-ca), so trust findings are about ringlb, not
# about a self-signed test certificate. (testssl 3.0's session resumption check runs s_client with
# TLS 1.3 and no input, which ends before the server's post-handshake tickets arrive: it reports
# "Ticket resumption test not possible / ID: no" for TLS 1.3 servers; `openssl s_client -tls1_2
# -sess_out/-sess_in`, with and without -no_ticket, shows ringlb resuming.) The origin is ringlb-bench's built-in backend (or nginx).
# Runs testssl.sh (installed with apt-get when missing), saves its log and JSON under OUT
# (default bench-out/testssl, ignored by git), and prints the HIGH and CRITICAL findings.
#
# Usage: bench/tools/testssl_run.sh [OUT]        (RINGLB=path to pick the binary; default
#        target/release/ringlb, else target/debug/ringlb)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:-$ROOT/bench-out/testssl}
PORT=19840
ORIGIN=19841
RINGLB=${RINGLB:-}
if [ -z "$RINGLB" ]; then
  for b in "$ROOT/target/release/ringlb" "$ROOT/target/debug/ringlb"; do
    if [ -x "$b" ]; then RINGLB=$b; break; fi
  done
fi
[ -x "${RINGLB:-}" ] || { echo "build first: cargo build --release --bins" >&2; exit 2; }
RINGLB=$(realpath "$RINGLB")

for p in $PORT $ORIGIN; do
  if (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then
    echo "testssl_run.sh: 127.0.0.1:$p is already in use (a process left from an earlier run? \`ss -ltnp 'sport = :$p'\` names it): stop it first" >&2
    exit 1
  fi
done
TESTSSL=$(command -v testssl || command -v testssl.sh || true)
if [ -z "$TESTSSL" ]; then
  echo "installing testssl.sh (apt-get)" >&2
  apt-get install -y testssl.sh >/dev/null || { apt-get update >/dev/null && apt-get install -y testssl.sh >/dev/null; }
  TESTSSL=$(command -v testssl || command -v testssl.sh)
fi

mkdir -p "$OUT"
OUT=$(realpath "$OUT")
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
# A CRL distribution point and an OCSP URI (never fetched) as a public CA's certificate has them:
# without, testssl rates the certificate HIGH ("Neither CRL nor OCSP URI provided"), a finding
# about the test certificate rather than about ringlb.
cat > ext.cnf <<'EXT'
basicConstraints = CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
crlDistributionPoints = URI:http://127.0.0.1:1/ca.crl
authorityInfoAccess = OCSP;URI:http://127.0.0.1:1/ocsp
EXT
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
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert ca.crt "https://localhost:$PORT/" || true)
[ "$code" = 200 ] || { echo "ringlb does not answer over https ($code):" >&2; cat ringlb.log >&2; exit 1; }

echo "ringlb: $RINGLB ($("$RINGLB" --version 2>/dev/null || true))"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
LOG=$OUT/testssl-$STAMP.log
JSON=$OUT/testssl-$STAMP.json
set +e
"$TESTSSL" --quiet --color 0 --warnings off --add-ca "$TMP/ca.crt" \
  --logfile "$LOG" --jsonfile "$JSON" "https://localhost:$PORT/" >/dev/null 2>"$TMP/testssl.err"
rc=$?
set -e
echo "testssl exit status $rc (its number of findings at or above its warning level, when < 50)"
grep -m2 "^## version" "$LOG" || true
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
rest = [f for f in items if f.get("severity") in ("MEDIUM", "LOW", "WARN")]
print("other findings (MEDIUM, LOW, WARN): %d" % len(rest))
for f in rest:
    print("  %-8s %-28s %s" % (f["severity"], f.get("id", "?"), f.get("finding", "")))
PY
