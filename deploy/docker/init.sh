#!/bin/sh
# One-shot set-up for docker-compose's softhsm-init service; safe to run again.
#
#  1. a SoftHSM token (softhsm/init-token.sh)        -> the token volume
#  2. the responder key pair on it (hsm-ocsp keygen) -> DATA/responder-key.txt
#  3. a certificate request for it (hsm-ocsp csr)    -> DATA/responder.csr
#  4. with HSM_OCSP_DEMO_CA=1 only: a throw-away CA in DATA that signs the request
#     and issues one good and one revoked certificate
#  5. waits for nothing: unless DATA holds ca.pem, index.txt and ocsp.pem it says
#     what to put there and fails, so the responder is not started
#  6. hsm-ocsp check on the whole configuration
#
# Environment (the compose file sets these):
#   SOFTHSM2_CONF, TOKEN_LABEL, HSM_OCSP_PIN, HSM_OCSP_SO_PIN   as for init-token.sh
#   HSM_OCSP_DATA       CA files, CSR (default /var/lib/hsm-ocsp/data)
#   HSM_OCSP_CONFIG     the responder's config (default /etc/hsm-ocsp/config.toml)
#   HSM_OCSP_MODULE     PKCS#11 module (default /usr/lib/softhsm/libsofthsm2.so)
#   HSM_OCSP_KEY        key URI (default pkcs11:token=$TOKEN_LABEL;object=responder)
#   HSM_OCSP_ALGORITHM  keygen algorithm (default ec-p256)
#   HSM_OCSP_SUBJECT    responder certificate subject (default CN=OCSP Responder)
#   HSM_OCSP_DEMO_CA    1 to make the demo CA (never for a real deployment)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
TOKEN_LABEL=${TOKEN_LABEL:-ocsp}
DATA=${HSM_OCSP_DATA:-/var/lib/hsm-ocsp/data}
CONFIG=${HSM_OCSP_CONFIG:-/etc/hsm-ocsp/config.toml}
MODULE=${HSM_OCSP_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
KEY=${HSM_OCSP_KEY:-pkcs11:token=$TOKEN_LABEL;object=responder}
ALGORITHM=${HSM_OCSP_ALGORITHM:-ec-p256}
SUBJECT=${HSM_OCSP_SUBJECT:-CN=OCSP Responder}
export TOKEN_LABEL
umask 027
mkdir -p "$DATA"

"$here/softhsm/init-token.sh"

if [ -f "$DATA/responder-key.txt" ]; then
    echo "responder key exists (see $DATA/responder-key.txt)"
else
    hsm-ocsp keygen --module "$MODULE" --key "$KEY" --algorithm "$ALGORITHM" \
        > "$DATA/responder-key.txt.new"
    mv "$DATA/responder-key.txt.new" "$DATA/responder-key.txt"
    echo "responder key made: $(tail -n 1 "$DATA/responder-key.txt")"
fi

if [ ! -f "$DATA/responder.csr" ]; then
    hsm-ocsp csr --module "$MODULE" --key "$KEY" --subject "$SUBJECT" --out "$DATA/responder.csr"
    echo "certificate request written to $DATA/responder.csr"
fi

if [ "${HSM_OCSP_DEMO_CA:-0}" = 1 ] && [ ! -f "$DATA/ca.pem" ]; then
    echo "HSM_OCSP_DEMO_CA=1: making a demo CA in $DATA (not for production)"
    demo="$DATA/demo-ca"
    mkdir -p "$demo/newcerts"
    : > "$DATA/index.txt"
    echo 1000 > "$demo/serial"
    cat > "$demo/openssl.cnf" <<CNF
[ ca ]
default_ca = demo
[ demo ]
database = $DATA/index.txt
new_certs_dir = $demo/newcerts
serial = $demo/serial
certificate = $DATA/ca.pem
private_key = $demo/ca.key
default_md = sha256
default_days = 365
policy = any
unique_subject = no
[ any ]
commonName = supplied
[ leaf ]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
authorityKeyIdentifier = keyid
subjectKeyIdentifier = hash
[ ocsp ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = OCSPSigning
noCheck = ignored
authorityKeyIdentifier = keyid
subjectKeyIdentifier = hash
[ req ]
distinguished_name = dn
[ dn ]
CNF
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$demo/ca.key" -subj "/O=hsm-ocsp demo/CN=Demo Root CA" -days 3650 \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$DATA/ca.pem" 2>/dev/null
    openssl ca -batch -config "$demo/openssl.cnf" -extensions ocsp -notext \
        -in "$DATA/responder.csr" -out "$DATA/ocsp.pem" 2>/dev/null
    for name in good revoked; do
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout "$demo/$name.key" -subj "/CN=$name.demo" -out "$demo/$name.csr" 2>/dev/null
        openssl ca -batch -config "$demo/openssl.cnf" -extensions leaf -notext \
            -in "$demo/$name.csr" -out "$DATA/$name.pem" 2>/dev/null
    done
    openssl ca -config "$demo/openssl.cnf" -revoke "$DATA/revoked.pem" \
        -crl_reason keyCompromise 2>/dev/null
fi

missing=""
for file in ca.pem index.txt ocsp.pem; do
    [ -f "$DATA/$file" ] || missing="$missing $file"
done
if [ -n "$missing" ]; then
    cat >&2 <<MSG
hsm-ocsp init: missing in $DATA:$missing
  Have your CA sign $DATA/responder.csr as an OCSP responder certificate
  (openssl ca -extensions ocsp ..., see docs/operators-guide.md), then put
  ca.pem (the issuing CA), ocsp.pem (the signed responder certificate) and
  index.txt (the CA's database, kept up to date) there, e.g. with
  docker compose cp FILE softhsm-init:$DATA/  and run this again.
MSG
    exit 3
fi

hsm-ocsp check --config "$CONFIG"
