#!/bin/sh
# The build steps of the hsm-ocsp container image. The Dockerfile runs this;
# tests/test_deploy.py runs it on the host into a temporary prefix, so the image's
# path is tested where no Docker engine runs.
#
#   build-image.sh SRC PREFIX
#
# SRC     source tree (pyproject.toml, README.md, constraints.txt, hsm_ocsp/, softhsm/,
#         deploy/docker/)
# PREFIX  where to install: PREFIX/venv (the package), PREFIX/share/hsm-ocsp (scripts)
#
# Environment:
#   HSM_OCSP_USER           create this system user and group (uid and gid 10001) and give it the state
#                           directories; unset on a host build (the test)
#   HSM_OCSP_REUSE_DEPS     1: install only hsm-ocsp itself and let the venv import the
#                           dependencies from PYTHON's own site-packages (the test: they
#                           are in the test venv already; pip still fetches the build
#                           backend)
#   PYTHON                  interpreter for the venv (default python3)
set -eu
SRC=$(cd "${1:?usage: build-image.sh SRC PREFIX}" && pwd)
PREFIX=${2:?usage: build-image.sh SRC PREFIX}
PYTHON=${PYTHON:-python3}
PACKAGES="python3 python3-venv softhsm2 openssl ca-certificates"

# 1. Debian packages, only those missing (a host that has them needs no root).
missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "build-image: installing Debian packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
    apt-get clean  # the downloaded .debs: not every base image drops them by itself
    rm -rf /var/lib/apt/lists/*
else
    echo "build-image: Debian packages present"
fi

# 2. The package in its own venv, built from a copy so SRC stays untouched.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp -R "$SRC/pyproject.toml" "$SRC/README.md" "$SRC/constraints.txt" "$SRC/hsm_ocsp" \
    "$SRC/softhsm" "$stage/"
find "$stage" -name __pycache__ -prune -exec rm -rf {} +
mkdir -p "$PREFIX"
if [ "${HSM_OCSP_REUSE_DEPS:-0}" = 1 ]; then
    # The dependencies are those $PYTHON imports (its venv's site-packages, not the
    # system's): a .pth file puts its site directories after the new venv's own.
    "$PYTHON" -m venv "$PREFIX/venv"
    site=$("$PREFIX/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    "$PYTHON" -c 'import sys; print("\n".join(p for p in sys.path if p.endswith("-packages")))' \
        > "$site/_hsm_ocsp_host_deps.pth"
    "$PREFIX/venv/bin/python" -m pip install -q --no-deps "$stage"
else
    "$PYTHON" -m venv "$PREFIX/venv"
    "$PREFIX/venv/bin/python" -m pip install -q --no-cache-dir --upgrade pip
    # The versions CI tests (constraints.txt), not whatever the index serves today.
    "$PREFIX/venv/bin/python" -m pip install -q --no-cache-dir -c "$stage/constraints.txt" "$stage"
    # Nothing installs packages at run time: pip and setuptools stay out of the image.
    "$PREFIX/venv/bin/python" -m pip uninstall -q -y pip setuptools
fi

# 3. The scripts the one-shot set-up runs.
mkdir -p "$PREFIX/share/hsm-ocsp/softhsm"
cp "$SRC/softhsm/init-token.sh" "$SRC/softhsm/softhsm2.conf.in" \
    "$PREFIX/share/hsm-ocsp/softhsm/"
cp "$SRC/deploy/docker/init.sh" "$PREFIX/share/hsm-ocsp/init.sh"
chmod 755 "$PREFIX/share/hsm-ocsp/init.sh" "$PREFIX/share/hsm-ocsp/softhsm/init-token.sh"

# 4. In the image: an unprivileged user owning the volume mount points (token, CA data,
#    the store's state_dir), so fresh named volumes start out writable by it (podman
#    and Docker copy a mount point's owner into a new volume; Kubernetes uses fsGroup).
if [ -n "${HSM_OCSP_USER:-}" ]; then
    # Fixed ids, user and group alike: files in volumes are 10001:10001 on every
    # host, and the Dockerfile's numeric USER lets Kubernetes check runAsNonRoot.
    if ! getent group "$HSM_OCSP_USER" >/dev/null 2>&1; then
        groupadd --system --gid 10001 "$HSM_OCSP_USER"
    fi
    if ! id "$HSM_OCSP_USER" >/dev/null 2>&1; then
        useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/hsm-ocsp \
            --shell /usr/sbin/nologin "$HSM_OCSP_USER"
    fi
    mkdir -p /var/lib/hsm-ocsp/token /var/lib/hsm-ocsp/data /var/lib/hsm-ocsp/state \
        /etc/hsm-ocsp
    chown 10001:10001 /var/lib/hsm-ocsp/token /var/lib/hsm-ocsp/data /var/lib/hsm-ocsp/state
    chmod 700 /var/lib/hsm-ocsp/token /var/lib/hsm-ocsp/state
fi

# 5. Smoke test: the command runs and the package imports from the venv.
"$PREFIX/venv/bin/hsm-ocsp" --version
"$PREFIX/venv/bin/python" -c "import hsm_ocsp.server.supervisor, pkcs11, cryptography, aiohttp"
echo "build-image: installed in $PREFIX"
