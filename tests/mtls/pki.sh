#!/bin/sh
# Test PKI for tests/integration/mtls.rs and bench/tools/mtls_cost.py, made with the openssl CLI.
#
#   tests/mtls/pki.sh DIR
#
# DIR/ca/         the client CA, as an `openssl ca` database (ca.key, ca.crt, index.txt, serial,
#                 crlnumber, openssl.cnf with relative paths: run `openssl ca` from DIR/ca)
# DIR/clients-ca.pem   a bundle: an unrelated CA first, then the client CA
# DIR/site.{crt,key}   the server certificate (localhost, 127.0.0.1), signed by the client CA
# DIR/other.{crt,key}  another server certificate (an OCSP response for it is "for another cert")
# DIR/NAME.{crt,key}   client certificates, EC P-256, signed by the client CA:
#     alice    CN=alice,OU=eng,O=Example Corp,C=US      serial 0x1000 (4096), the first issued
#     admin    CN=admin-bob,OU=ops,O=Example Corp,C=US
#     carol    CN=Carol,O=Example Corp,C=US
#     revoked  CN=mallory,O=Example Corp,C=US          revoked in revoked.crl.pem
#     later    CN=dave,O=Example Corp,C=US             valid; tests revoke it in a copy of ca/
#     expired  CN=old,O=Example Corp,C=US              valid 2020-01-01 .. 2021-01-01
#     weird    special characters and UTF-8 in the subject, serial 0x9F00000000000001 (its DER
#              integer has a leading zero byte)
#     rogue    CN=alice,... signed by a CA the listener does not trust
# DIR/revoked.crl.pem  the client CA's CRL revoking `revoked`
# DIR/site.ocsp.der    a "good" OCSP response for site.crt (nextUpdate in 1 day)
# DIR/other.ocsp.der   a "good" OCSP response for other.crt
# Every certificate file holds the leaf only (PEM, no text); keys are PKCS#8 PEM.
set -eu
DIR=$1
mkdir -p "$DIR/ca"
cd "$DIR"
ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

cat > ca/openssl.cnf <<'CNF'
[ca]
default_ca = testca
[testca]
dir = .
database = ./index.txt
new_certs_dir = ./newcerts
certificate = ./ca.crt
private_key = ./ca.key
serial = ./serial
crlnumber = ./crlnumber
default_md = sha256
default_days = 30
default_crl_days = 30
policy = anything
unique_subject = no
copy_extensions = none
preserve = yes
[anything]
countryName = optional
organizationName = optional
organizationalUnitName = optional
commonName = supplied
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[client_ext]
basicConstraints = CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
[server_ext]
basicConstraints = CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
authorityKeyIdentifier = keyid
CNF

# The client CA (also signs the server certificates and the OCSP responses).
mkdir -p ca/newcerts
: > ca/index.txt
echo 1000 > ca/serial
echo 01 > ca/crlnumber
ec ca/ca.key
openssl req -new -x509 -config ca/openssl.cnf -extensions ca_ext -key ca/ca.key -days 365 \
  -subj "/C=US/O=Example Corp/CN=Example Client CA" -out ca/ca.crt
# An unrelated CA in the bundle, and a rogue CA nobody trusts.
for n in extra rogue; do
  ec $n-ca.key
  openssl req -new -x509 -config ca/openssl.cnf -extensions ca_ext -key $n-ca.key -days 365 \
    -subj "/O=Elsewhere/CN=$n CA" -out $n-ca.crt
done
cat extra-ca.crt ca/ca.crt > clients-ca.pem

# issue NAME SUBJECT EXT [openssl ca options]: a key and a certificate signed by the client CA.
issue() {
  n=$1; subj=$2; ext=$3; shift 3
  ec $n.key
  openssl req -new -utf8 -config ca/openssl.cnf -key $n.key -subj "$subj" -out $n.csr
  (cd ca && openssl ca -batch -utf8 -notext -config openssl.cnf -extensions "$ext" \
     -in ../$n.csr -out ../$n.crt "$@" 2>/dev/null)
}
issue alice "/C=US/O=Example Corp/OU=eng/CN=alice" client_ext
issue admin "/C=US/O=Example Corp/OU=ops/CN=admin-bob" client_ext
issue carol "/C=US/O=Example Corp/CN=Carol" client_ext
issue revoked "/C=US/O=Example Corp/CN=mallory" client_ext
issue later "/C=US/O=Example Corp/CN=dave" client_ext
issue expired "/C=US/O=Example Corp/CN=old" client_ext -startdate 20200101000000Z -enddate 20210101000000Z
issue site "/O=Example Corp/CN=localhost" server_ext
issue other "/O=Example Corp/CN=other.localhost" server_ext

# Special characters: RFC 4514 escapes (, + " \ < > ; and a leading #), UTF-8 (non-ASCII bytes
# come out as \XX). Serial with its high bit set: DER adds a leading zero byte.
ec weird.key
openssl req -new -utf8 -config ca/openssl.cnf -key weird.key \
  -subj "/C=US/O=Smith, Jones \\+ Co; Ltd/OU=R&D <lab>/CN=#Zoë \"Z\" \\\\ x" -out weird.csr
openssl x509 -req -in weird.csr -CA ca/ca.crt -CAkey ca/ca.key -set_serial 0x9F00000000000001 \
  -days 30 -extfile ca/openssl.cnf -extensions client_ext -out weird.crt 2>/dev/null

# A client certificate from the rogue CA, with alice's subject.
ec rogue.key
openssl req -new -config ca/openssl.cnf -key rogue.key \
  -subj "/C=US/O=Example Corp/OU=eng/CN=alice" -out rogue.csr
openssl x509 -req -in rogue.csr -CA rogue-ca.crt -CAkey rogue-ca.key -set_serial 0x1000 \
  -days 30 -extfile ca/openssl.cnf -extensions client_ext -out rogue.crt 2>/dev/null

# The CRL: mallory revoked.
(cd ca && openssl ca -config openssl.cnf -revoke ../revoked.crt 2>/dev/null \
  && openssl ca -config openssl.cnf -gencrl -out ../revoked.crl.pem 2>/dev/null)

# OCSP responses (the CA signs them itself).
for n in site other; do
  openssl ocsp -issuer ca/ca.crt -cert $n.crt -reqout $n.ocsp-req.der -no_nonce >/dev/null
  openssl ocsp -index ca/index.txt -rsigner ca/ca.crt -rkey ca/ca.key -CA ca/ca.crt \
    -reqin $n.ocsp-req.der -respout $n.ocsp.der -ndays 1 >/dev/null 2>&1
done
rm -f ./*.csr ./*.ocsp-req.der
