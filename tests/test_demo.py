"""``hsm-ocsp demo``: from an empty directory to answers ``openssl ocsp`` verifies."""

from __future__ import annotations

import multiprocessing
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from hsm_ocsp.cli.main import main

from .support import ROOT
from .support.server import free_port

DEMO_PIN = "86420975"  # distinctive, so finding it in output means a leak
_MADE = ["softhsm/softhsm2.conf", "softhsm/so-pin", "ca/ca.pem", "ca/ca.key", "ca/index.txt"]
_MADE += ["ca/good.pem", "ca/revoked.pem", "responder.csr", "responder.pem", "config.toml"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    env["HSM_OCSP_PIN"] = DEMO_PIN
    return env


def _count_keys(directory: Path) -> int:
    """Private keys labelled ocsp-responder on the demo token (a fresh process)."""
    code = (
        "import pkcs11, sys; from pkcs11 import Attribute, ObjectClass\n"
        "t = pkcs11.lib('/usr/lib/softhsm/libsofthsm2.so').get_token(token_label='hsm-ocsp-demo')\n"
        "with t.open(user_pin=sys.argv[1]) as s:\n"
        "    print(len(list(s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY,"
        " Attribute.LABEL: 'ocsp-responder'}))))\n"
    )
    env = {**_env(), "SOFTHSM2_CONF": str(directory / "softhsm" / "softhsm2.conf")}
    done = subprocess.run(
        [sys.executable, "-c", code, DEMO_PIN], env=env, capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def _wait_ready(process: subprocess.Popen[bytes], log: Path, port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"demo exited {process.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"demo not ready: {log.read_text()}")


def _demo_answers_good_and_revoked(
    argv: list[str], log: Path, port: int, env: dict[str, str], cwd: Path | None = None
) -> None:
    """Run the demo, then both ``openssl ocsp`` lines it prints; each must verify."""
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        _wait_ready(process, log, port)
        commands = [line.strip() for line in log.read_text().splitlines() if "openssl ocsp" in line]
        assert len(commands) == 2
        for command, status in zip(commands, ("good", "revoked"), strict=True):
            done = subprocess.run(
                shlex.split(command),
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
                cwd=cwd,
            )
            assert "Response verify OK" in done.stderr, done.stderr + done.stdout
            assert f"{status}.pem: {status}" in done.stdout
    finally:
        process.terminate()
        assert process.wait(15) == 0, log.read_text()


def test_demo_serves_good_and_revoked_then_reuses_everything(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    port = free_port()
    log = tmp_path / "demo.log"
    argv = [sys.executable, "-m", "hsm_ocsp", "demo", "--dir", str(directory), "--port", str(port)]
    _demo_answers_good_and_revoked(argv, log, port, _env())
    assert DEMO_PIN not in log.read_text()
    for name in _MADE:
        assert (directory / name).is_file(), name
    before = {name: (directory / name).read_bytes() for name in _MADE}
    assert _count_keys(directory) == 1

    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "hsm_ocsp",
            "demo",
            "--dir",
            str(directory),
            "--port",
            str(port),
            "--no-serve",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=_env(),
    )
    assert again.returncode == 0, again.stderr
    assert "demo: reusing token, key, CA and certificates" in again.stdout
    assert {name: (directory / name).read_bytes() for name in _MADE} == before
    assert _count_keys(directory) == 1
    script = subprocess.run(
        ["/bin/sh", str(ROOT / "softhsm" / "init-token.sh")],
        env={
            **_env(),
            "SOFTHSM2_CONF": str(directory / "softhsm" / "softhsm2.conf"),
            "TOKEN_LABEL": "hsm-ocsp-demo",
            "HSM_OCSP_SO_PIN": "unused",
        },
        capture_output=True,
        text=True,
        check=True,
    )
    assert "exists; nothing to do" in script.stdout


def _demo_then_check(directory: str) -> None:
    """In a fresh interpreter: python-pkcs11 reads SOFTHSM2_CONF once per process."""
    os.environ.pop("SOFTHSM2_CONF", None)
    os.environ["HSM_OCSP_PIN"] = DEMO_PIN
    demo = main(["demo", "--dir", directory, "--no-serve"])
    check = main(["check", "--config", str(Path(directory) / "config.toml")])
    sys.exit(demo * 10 + check)


def test_demo_through_main_sets_up_a_configuration_check_accepts(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    process = multiprocessing.get_context("spawn").Process(
        target=_demo_then_check, args=(str(directory),)
    )
    process.start()
    process.join(120)
    assert process.exitcode == 0
    text = (directory / "config.toml").read_text()
    assert 'key = "pkcs11:token=hsm-ocsp-demo;object=ocsp-responder"' in text
    assert 'listen = "127.0.0.1:8080"' in text
    index = (directory / "ca" / "index.txt").read_text().splitlines()
    assert [line[0] for line in index].count("R") == 2
    assert [line[0] for line in index].count("V") == 3  # two leaves and the responder


def test_demo_needs_a_pin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HSM_OCSP_PIN", raising=False)
    assert main(["demo", "--dir", str(tmp_path / "d"), "--no-serve"]) == 2
    assert "HSM_OCSP_PIN" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_demo_dir_must_be_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "file"
    file.write_text("")
    assert main(["demo", "--dir", str(file), "--no-serve"]) == 2
    assert "is not a directory" in capsys.readouterr().err


@pytest.mark.slow
def test_installed_wheel_runs_demo_keygen_csr_check_and_serve_outside_the_checkout(
    tmp_path: Path,
) -> None:
    """``pip install hsm-ocsp`` as a user does it: a wheel in a new venv, nothing of the tree.

    The wheel is built from a copy of what the package is made of, so nothing is
    written into the checkout; it installs with its dependencies from the index
    (pip's cache makes that quick) and runs with the checkout out of reach.
    """
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("hsm_ocsp", "softhsm"):  # softhsm/: the SoftHSM set-up's one home
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", wheels, source], check=True, timeout=300)
    (wheel,) = wheels.glob("hsm_ocsp-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    subprocess.run(
        [venv / "bin" / "python", *pip[1:], "install", "-c", ROOT / "constraints.txt", wheel],
        check=True,
        timeout=600,
    )

    away = tmp_path / "elsewhere"  # the working directory: no checkout there or above
    away.mkdir()
    env = {k: v for k, v in _env().items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"
    where = subprocess.run(
        ["python", "-c", "import hsm_ocsp; print(hsm_ocsp.__file__)"],
        env=env,
        cwd=away,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(venv)), where
    port = free_port()
    # The demo runs keygen, csr and serve on the way; check is run on its result below.
    _demo_answers_good_and_revoked(
        ["hsm-ocsp", "demo", "--dir", "demo", "--port", str(port)],
        tmp_path / "demo.log",
        port,
        env,
        cwd=away,
    )
    check = subprocess.run(
        ["hsm-ocsp", "check", "--config", "demo/config.toml"],
        env={**env, "SOFTHSM2_CONF": str(away / "demo" / "softhsm" / "softhsm2.conf")},
        cwd=away,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_demo_with_status_from_the_crl(tmp_path: Path) -> None:
    """``demo --status crl``: the same answers, from the CA's CRL and new_certs_dir."""
    directory = tmp_path / "demo"
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "hsm_ocsp",
        "demo",
        "--dir",
        str(directory),
        "--port",
        str(port),
        "--status",
        "crl",
    ]
    _demo_answers_good_and_revoked(argv, tmp_path / "demo.log", port, _env())
    text = (directory / "config.toml").read_text()
    assert 'crl = "ca/ca.crl"' in text and "index =" not in text
    assert "CA demo: CRL" in (tmp_path / "demo.log").read_text()
