# hsm-ocsp: the two commands of README.md and the checks CI runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo
DEBIAN_PACKAGES := softhsm2 openssl gnutls-bin p11-kit python3-venv python3-dev gcc \
	prometheus nginx wrk hey procps systemd opensc-pkcs11 opencryptoki \
	swtpm swtpm-tools tpm2-abrmd libtss2-tcti-tabrmd0 libtpm2-pkcs11-1 libtpm2-pkcs11-tools \
	tpm2-tools dbus libp11-kit-dev redis-server freeradius eapoltest golang-cfssl

.PHONY: demo test test-fast lint deps system-deps clean image-test

## Start a responder on a demo SoftHSM token and demo CA (Ctrl-C stops it).
demo: deps
	HSM_OCSP_PIN=$${HSM_OCSP_PIN:-1234} $(VENV)/bin/hsm-ocsp demo --dir $(DEMO_DIR)

## Run lint, types and the whole test suite (what CI runs): three workers, then the
## tests of the machine's one OpenCryptoki token alone.
test: deps lint
	$(PY) -m pytest -m "not machine_tokens"
	$(PY) -m pytest -n 0 -m machine_tokens

## The same without the scenario tests marked slow: for day-to-day work.
test-fast: deps lint
	$(PY) -m pytest -m "not slow and not machine_tokens"

## Build the container image with podman, run the compose stack and play the Kubernetes
## manifests with podman kube play (root; a few minutes; not in test).
image-test: deps
	PYTHON=$(PY) bash scripts/image-test.sh

lint: deps
	$(VENV)/bin/ruff check hsm_ocsp tests
	$(VENV)/bin/ruff format --check hsm_ocsp tests
	$(VENV)/bin/mypy

deps: system-deps $(VENV)/.installed

system-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
