#!/bin/bash
# make image-test: build the container image with podman, run the compose stack for real,
# then play the Kubernetes manifests with podman kube play (scripts/kube_play.py).
#
# Not part of make test (it takes a few minutes and needs root). Steps:
#  1. podman, runc, podman-compose and debootstrap from Debian, if missing;
#  2. the Dockerfile's base (debian:bookworm-slim): pulled if a registry answers, else
#     bootstrapped here (debootstrap --variant=minbase bookworm) and imported under that
#     name. A locally bootstrapped base also gets this machine's CA bundle and pip.conf,
#     so that a TLS-intercepting proxy in front of the package registries is trusted;
#  3. podman build of the unchanged Dockerfile;
#  4. docker-compose.yml's softhsm-init (demo CA) and responder, with podman-compose, in a
#     copy of the compose files; openssl ocsp must verify a good and a revoked answer;
#  5. the responder is stopped (podman stop -t 15, compose's stop_grace_period) while a
#     client sends its body a byte a second: it must exit 0;
#  6. prints the image's size and its venv's, then removes the stack and its volumes;
#  7. scripts/kube_play.py: deploy/kubernetes/ (set-up Job, Redis, a signing host, two
#     edges) with podman kube play; a good and a revoked answer through each edge, a
#     revocation reaching them, the resources each pod used.
# podman 4.3 on this kernel: runc (not crun), and container limits under the hard ones.
set -eu
cd "$(dirname "$0")/.."
SRC=$(pwd)
[ "$(id -u)" = 0 ] || { echo "image-test: run as root" >&2; exit 2; }
missing=""
for p in podman runc podman-compose debootstrap catatonit; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi

work=$(mktemp -d /var/tmp/hsm-ocsp-image-test.XXXXXX)
project=hsmocspimagetest
cleanup() {
    (cd "$work/compose" 2>/dev/null && podman-compose -p "$project" down -v >/dev/null 2>&1) || true
    [ -n "${slow:-}" ] && kill "$slow" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cap() { if [ "$1" = unlimited ] || [ "$1" -gt 4096 ]; then echo 4096; else echo "$1"; fi; }
nofile=$(cap "$(ulimit -Hn)"); nproc=$(cap "$(ulimit -Hu)")
printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=%s:%s"]\n' \
    "$nofile" "$nofile" "$nproc" "$nproc" > "$work/containers.conf"
export CONTAINERS_CONF="$work/containers.conf"

base=docker.io/library/debian:bookworm-slim
if ! podman image exists "$base" && ! timeout 60 podman pull -q "$base" >/dev/null 2>&1; then
    mirror=$(grep -rhoE '^(URIs:|deb) +[a-z]+://[^ ]+/debian/?( |$)' /etc/apt/sources.list \
        /etc/apt/sources.list.d/ 2>/dev/null | head -n1 | awk '{print $2}')
    echo "image-test: no registry; bootstrapping $base from ${mirror:-deb.debian.org}"
    root="$work/base"
    debootstrap --variant=minbase bookworm "$root" "${mirror:-http://deb.debian.org/debian}" \
        > "$work/debootstrap.log" 2>&1 || { tail -5 "$work/debootstrap.log"; exit 1; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp /etc/ssl/certs/ca-certificates.crt "$root/usr/local/share/ca-certificates/host.crt"
    [ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"
    tar -C "$root" -c . | podman import -q - "$base" >/dev/null
    rm -rf "$root"
fi

echo "image-test: podman build"
podman build -q --pull=never --network=host -t hsm-ocsp:latest "$SRC" >/dev/null

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$work/compose"
cp -R "$SRC/docker-compose.yml" "$SRC/deploy" "$work/compose/"
sed -i "s/127.0.0.1:8080:8080/127.0.0.1:$port:8080/" "$work/compose/docker-compose.yml"
printf 'HSM_OCSP_PIN=%s\nHSM_OCSP_SO_PIN=%s\n' "$(openssl rand -hex 8)" "$(openssl rand -hex 8)" \
    > "$work/compose/.env"
cd "$work/compose"
echo "image-test: compose up (softhsm-init with a demo CA, responder) on 127.0.0.1:$port"
HSM_OCSP_DEMO_CA=1 podman-compose -p "$project" up -d softhsm-init responder > "$work/up.log" 2>&1 \
    || { tail -20 "$work/up.log"; exit 1; }
ready=""
for _ in $(seq 90); do
    if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/readyz', timeout=2)" 2>/dev/null; then
        ready=yes; break
    fi
    sleep 1
done
[ -n "$ready" ] || { podman logs "${project}_softhsm-init_1"; podman logs "${project}_responder_1"; exit 1; }
data=$(podman volume inspect "${project}_hsm-ocsp-data" --format '{{.Mountpoint}}')
for name in good revoked; do
    out=$(openssl ocsp -issuer "$data/ca.pem" -cert "$data/$name.pem" -CAfile "$data/ca.pem" \
        -url "http://127.0.0.1:$port/" 2>&1)
    echo "$out" | sed 's/^/  /' | head -2
    echo "$out" | grep -q "Response verify OK" && echo "$out" | grep -q "$name.pem: $name" \
        || { echo "image-test: FAILED: $name"; exit 1; }
done

# A client sends a POST body a byte a second while the responder is stopped.
python3 - "$port" <<'PY' &
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0")
for _ in range(30):
    time.sleep(1)
    try:
        s.sendall(b"\x00")
    except OSError:
        break
PY
slow=$!
sleep 1
started=$(date +%s)
podman stop -t 15 "${project}_responder_1" >/dev/null
took=$(( $(date +%s) - started ))
code=$(podman inspect "${project}_responder_1" --format '{{.State.ExitCode}}')
echo "  stopped under a slow client in ${took} s, exit code $code"
[ "$code" = 0 ] || { echo "image-test: FAILED: exit code $code on stop"; exit 1; }

size=$(podman image inspect hsm-ocsp:latest --format '{{.Size}}')
venv=$(podman run --rm --network=none --entrypoint du hsm-ocsp:latest -sm /opt/hsm-ocsp/venv | cut -f1)
echo "image-test: compose passed; image $((size / 1000000)) MB (its base included), venv $venv MB"

cd "$SRC"
"${PYTHON:-python3}" scripts/kube_play.py
