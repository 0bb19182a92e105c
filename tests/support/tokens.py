"""Tokens other than SoftHSM for the tests: OpenCryptoki's soft token (Debian opencryptoki)
and tpm2-pkcs11 on swtpm (Debian libtpm2-pkcs11-1, swtpm, tpm2-abrmd).

Facts this relies on, measured on Debian 12 as root without systemd: OpenCryptoki 3.8
needs its slot daemon ``pkcsslotd`` running (it writes /var/run/pkcsslotd.pid), PINs of
4 to 8 characters, and an /etc/hosts; its soft token is one per machine (3.8 has no
per-slot ``tokdir``), so the fixture sets the machine's token aside, starts from a
blank one and puts the old one back; its EC and EdDSA key generation are absent. The
machine's opencryptoki.conf is likewise replaced by one with the soft token alone for
the session; the daemon started here is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .ca import CASetup, write_config
from .pki import OpenSSLCA, run
from .server import free_port, start_server
from .softhsm import MODULE

OCK_MODULE = "/usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so"
OCK_CONF = Path("/etc/opencryptoki/opencryptoki.conf")
OCK_PID = Path("/var/run/pkcsslotd.pid")
OCK_TOKEN_DIR = Path("/var/lib/opencryptoki/swtok")
OCK_SLOT = 3
OCK_DEFAULT_SO_PIN = "87654321"


@dataclasses.dataclass(frozen=True)
class TokenUnderTest:
    name: str
    module: str
    label: str
    pin: str
    algorithms: tuple[str, ...]  # what its key generation offers
    refused: tuple[str, ...] = ()  # what it does not


def _run(*args: str, stdin: str | None = None) -> None:
    done = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed: {done.stderr or done.stdout}")


def opencryptoki_available() -> bool:
    return Path(OCK_MODULE).exists() and shutil.which("pkcsslotd", path="/usr/sbin") is not None


def opencryptoki(label: str = "hsm-ocsp-ock", pin: str = "24682468") -> Iterator[TokenUnderTest]:
    """The soft token, initialised afresh with ``label`` and ``pin``, for as long as it yields."""
    saved = OCK_CONF.read_bytes() if OCK_CONF.exists() else None
    if OCK_PID.exists():  # a daemon of an earlier run: ours to replace
        _stop_daemon()
    # The machine's one soft token is set aside and a blank one (default SO PIN, no
    # objects) takes its place, so no login is ever tried with a PIN it may not have.
    aside = OCK_TOKEN_DIR.with_name(OCK_TOKEN_DIR.name + ".hsm-ocsp-aside")
    if OCK_TOKEN_DIR.exists() and not aside.exists():
        OCK_TOKEN_DIR.rename(aside)
    shutil.rmtree(OCK_TOKEN_DIR, ignore_errors=True)
    (OCK_TOKEN_DIR / "TOK_OBJ").mkdir(parents=True)
    for path in (OCK_TOKEN_DIR, OCK_TOKEN_DIR / "TOK_OBJ"):
        shutil.chown(path, "root", "pkcs11")
        path.chmod(0o770)
    OCK_CONF.write_text(
        f"version opencryptoki-3.1\n\nslot {OCK_SLOT}\n{{\nstdll = libpkcs11_sw.so\n}}\n"
    )
    run_dir = Path("/run/opencryptoki")
    run_dir.mkdir(exist_ok=True)
    shutil.chown(run_dir, "root", "pkcs11")
    run_dir.chmod(0o770)
    try:
        _run("/usr/sbin/pkcsslotd")
        deadline = time.monotonic() + 10
        while not OCK_PID.exists():
            assert time.monotonic() < deadline, "pkcsslotd wrote no PID file"
            time.sleep(0.05)
        slot = str(OCK_SLOT)
        so_pin = "13571357"
        _run("pkcsconf", "-I", "-c", slot, "-S", OCK_DEFAULT_SO_PIN, stdin=f"{label}\n")
        _run("pkcsconf", "-P", "-c", slot, "-S", OCK_DEFAULT_SO_PIN, "-n", so_pin)
        _run("pkcsconf", "-u", "-c", slot, "-S", so_pin, "-n", "11111111")
        _run("pkcsconf", "-p", "-c", slot, "-U", "11111111", "-n", pin)
        yield TokenUnderTest(
            "OpenCryptoki soft token",
            OCK_MODULE,
            label,
            pin,
            algorithms=("rsa-2048", "rsa-3072"),
            refused=("ec-p256", "ed25519"),
        )
    finally:
        _stop_daemon()
        if saved is not None:
            OCK_CONF.write_bytes(saved)
        if aside.exists():
            shutil.rmtree(OCK_TOKEN_DIR, ignore_errors=True)
            aside.rename(OCK_TOKEN_DIR)


def _stop_daemon() -> None:
    try:
        pid = int(OCK_PID.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    OCK_PID.unlink(missing_ok=True)


# --- tpm2-pkcs11 on a software TPM ------------------------------------------------

TPM2_MODULE = "/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so"


def tpm2_available() -> bool:
    tools = ("swtpm", "tpm2-abrmd", "tpm2_ptool", "dbus-daemon")
    path = "/usr/sbin:/usr/bin:/sbin:/bin"
    return Path(TPM2_MODULE).exists() and all(shutil.which(t, path=path) for t in tools)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _is_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_for_port(port: int) -> None:
    import socket

    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on 127.0.0.1:{port}"
            time.sleep(0.05)


def tpm2(
    directory: Path, label: str = "hsm-ocsp-tpm", pin: str = "24682468"
) -> Iterator[TokenUnderTest]:
    """tpm2-pkcs11 over tpm2-abrmd over swtpm, all private to this run.

    swtpm listens on two free 127.0.0.1 ports; tpm2-abrmd runs on a D-Bus session
    bus of its own (no system bus, no systemd); the token's store is in
    ``directory``. The environment variables the module reads are set in this
    process while it yields (servers and CLI processes started meanwhile inherit
    them) and removed afterwards. Every daemon is stopped by its PID.
    """
    port = _free_port()
    while not _is_free(port + 1):  # the swtpm TCTI finds the control port at port + 1
        port = _free_port()
    state, store = directory / "state", directory / "store"
    state.mkdir(parents=True)
    store.mkdir()
    started: list[int] = []
    env_before = {k: os.environ.get(k) for k in _TPM2_ENV}
    try:
        _run(
            "swtpm",
            "socket",
            "--tpm2",
            "--tpmstate",
            f"dir={state}",
            "--server",
            f"type=tcp,port={port},bindaddr=127.0.0.1",
            "--ctrl",
            f"type=tcp,port={port + 1},bindaddr=127.0.0.1",  # the TCTI's choice
            "--flags",
            "not-need-init,startup-clear",
            "--pid",
            f"file={directory / 'swtpm.pid'}",
            "--daemon",
        )
        started.append(int((directory / "swtpm.pid").read_text()))
        _wait_for_port(port)
        bus = subprocess.run(
            ["dbus-daemon", "--session", "--fork", "--print-address=1", "--print-pid=1"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.split()
        started.append(int(bus[1]))
        os.environ["DBUS_SESSION_BUS_ADDRESS"] = bus[0]
        with (directory / "abrmd.log").open("wb") as log:
            abrmd = subprocess.Popen(
                [
                    "tpm2-abrmd",
                    "--session",
                    "--allow-root",
                    f"--tcti=swtpm:host=127.0.0.1,port={port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        started.append(abrmd.pid)
        os.environ["TPM2_PKCS11_TCTI"] = os.environ["TPM2TOOLS_TCTI"] = "tabrmd:bus_type=session"
        os.environ["TPM2_PKCS11_STORE"] = str(store)
        deadline = time.monotonic() + 30
        while True:  # until tpm2-abrmd has taken its name on the bus
            try:
                _run("tpm2_ptool", "init", f"--path={store}")
                break
            except RuntimeError:
                assert time.monotonic() < deadline, "tpm2-abrmd did not come up"
                time.sleep(0.3)
        _run(
            "tpm2_ptool",
            "addtoken",
            "--pid=1",
            f"--label={label}",
            "--sopin=13571357",
            f"--userpin={pin}",
            f"--path={store}",
        )
        yield TokenUnderTest(
            "tpm2-pkcs11 on swtpm",
            TPM2_MODULE,
            label,
            pin,
            algorithms=("ec-p256", "ec-p384", "rsa-2048", "rsa-3072"),
            refused=("ed25519",),
        )
    finally:
        for pid in reversed(started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if started[2:]:
            abrmd.wait(10)
        for key, value in env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_TPM2_ENV = ("DBUS_SESSION_BUS_ADDRESS", "TPM2_PKCS11_TCTI", "TPM2TOOLS_TCTI", "TPM2_PKCS11_STORE")


def operator_path(token: TokenUnderTest, algorithm: str, directory: Path) -> None:
    """keygen, csr, the CA signs it, check, serve, openssl ocsp good and revoked: all as
    an operator runs them, as processes, with the PIN in HSM_OCSP_PIN."""
    env = {**os.environ, "HSM_OCSP_PIN": token.pin}
    ca = OpenSSLCA(directory / "ca", f"{token.name} {algorithm} CA")
    certs = {"good": ca.issue("good"), "revoked": ca.issue("revoked")}
    ca.revoke(certs["revoked"], "-crl_reason", "keyCompromise")
    uri = f"pkcs11:token={token.label};object=ocsp-{algorithm}-{directory.name}"[:120]
    cli = [sys.executable, "-m", "hsm_ocsp"]
    for step in (
        ["keygen", "--module", token.module, "--key", uri, "--algorithm", algorithm],
        [
            "csr",
            "--module",
            token.module,
            "--key",
            uri,
            "--subject",
            "CN=OCSP " + algorithm,
            "--out",
            str(directory / "responder.csr"),
        ],
    ):
        done = subprocess.run([*cli, *step], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, f"{step[0]}: {done.stderr}"
    responder = directory / "responder.pem"
    run(
        "openssl",
        "x509",
        "-req",
        "-in",
        directory / "responder.csr",
        "-CA",
        ca.cert_path,
        "-CAkey",
        ca.dir / "ca.key",
        "-set_serial",
        "0x7E57",
        "-days",
        "30",
        "-extfile",
        ca.cnf,
        "-extensions",
        "ocsp",
        "-out",
        responder,
    )
    setup = CASetup(ca=ca, certs=certs, key_uri=uri, responder_cert=responder)
    port = free_port()
    config = write_config(directory / "config.toml", {"root": setup}, port=port)
    config.write_text(
        config.read_text().replace(f'module = "{MODULE}"', f'module = "{token.module}"')
    )
    done = subprocess.run(
        [*cli, "check", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, f"check: {done.stdout}{done.stderr}"
    saved = os.environ.get("HSM_OCSP_PIN")
    os.environ["HSM_OCSP_PIN"] = token.pin
    try:
        server = start_server(config, port, directory / "server.log", timeout=60)
    finally:
        if saved is not None:
            os.environ["HSM_OCSP_PIN"] = saved
    try:
        for name in ("good", "revoked"):
            done = subprocess.run(
                [
                    "openssl",
                    "ocsp",
                    "-issuer",
                    str(ca.cert_path),
                    "-cert",
                    str(certs[name]),
                    "-url",
                    server.url,
                    "-CAfile",
                    str(ca.cert_path),
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert "Response verify OK" in done.stderr, done.stderr + done.stdout
            assert f"{certs[name]}: {name}" in done.stdout
    finally:
        server.stop()
