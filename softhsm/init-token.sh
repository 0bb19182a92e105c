#!/bin/sh
# Make a SoftHSM token for hsm-ocsp, once. Safe to run again: an existing token
# with the same label is left as it is.
#
# Environment:
#   SOFTHSM2_CONF     config file to use; written from softhsm2.conf.in when missing
#   TOKEN_DIR         where SoftHSM keeps tokens (default: directory of SOFTHSM2_CONF + /tokens)
#   TOKEN_LABEL       token label (default: ocsp)
#   HSM_OCSP_PIN      user PIN (required)
#   HSM_OCSP_SO_PIN   security officer PIN (required)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
: "${SOFTHSM2_CONF:?set SOFTHSM2_CONF to the softhsm2.conf to use or create}"
: "${HSM_OCSP_PIN:?set HSM_OCSP_PIN}"
: "${HSM_OCSP_SO_PIN:?set HSM_OCSP_SO_PIN}"
TOKEN_LABEL=${TOKEN_LABEL:-ocsp}
TOKEN_DIR=${TOKEN_DIR:-$(dirname "$SOFTHSM2_CONF")/tokens}
export SOFTHSM2_CONF

if [ ! -f "$SOFTHSM2_CONF" ]; then
    mkdir -p "$(dirname "$SOFTHSM2_CONF")"
    sed "s|@TOKEN_DIR@|$TOKEN_DIR|" "$here/softhsm2.conf.in" > "$SOFTHSM2_CONF"
fi
mkdir -p "$TOKEN_DIR"
chmod 700 "$TOKEN_DIR"

# Compare labels as strings, not as a regular expression: a label like "a.b"
# must not match a token called "axb".
has_token() {
    softhsm2-util --show-slots 2>/dev/null | awk -v want="$TOKEN_LABEL" '
        /^[[:space:]]*Label:/ {
            sub(/^[[:space:]]*Label:[[:space:]]*/, ""); sub(/[[:space:]]+$/, "")
            if ($0 == want) found = 1
        }
        END { exit !found }'
}

if has_token; then
    echo "token '$TOKEN_LABEL' exists; nothing to do"
    exit 0
fi
# softhsm2-util takes PINs only as arguments; this one-shot set-up is the only
# place a PIN is on a command line, and never in the responder itself.
softhsm2-util --init-token --free --label "$TOKEN_LABEL" \
    --pin "$HSM_OCSP_PIN" --so-pin "$HSM_OCSP_SO_PIN" >/dev/null
echo "token '$TOKEN_LABEL' created in $TOKEN_DIR"
