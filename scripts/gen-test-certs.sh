#!/bin/bash
# Throwaway certificates for tests and local TLS trials: a CA, a server certificate for
# localhost / 127.0.0.1, and one client certificate per user name given (CN = the user).
#   scripts/gen-test-certs.sh DIR [USER...]
# Writes DIR/ca.crt, DIR/server.crt, DIR/server.key, DIR/<user>.crt, DIR/<user>.key.
set -euo pipefail
dir=${1:?usage: gen-test-certs.sh DIR [USER...]}
shift
mkdir -p "$dir"
cd "$dir"
quiet() { "$@" 2>/dev/null; }
quiet openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=pgring test CA" \
  -keyout ca.key -out ca.crt -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
sign() {  # name CN extensions
  quiet openssl req -newkey rsa:2048 -nodes -subj "/CN=$2" -keyout "$1.key" -out "$1.csr"
  printf '%s\n' "$3" > "$1.ext"
  quiet openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -sha256 \
    -extfile "$1.ext" -out "$1.crt"
  rm -f "$1.csr" "$1.ext"
  chmod 600 "$1.key"
}
sign server localhost "subjectAltName=DNS:localhost,IP:127.0.0.1"
for user in "$@"; do sign "$user" "$user" "extendedKeyUsage=clientAuth"; done
