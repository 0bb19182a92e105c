"""OCSP stapling: nginx as a TLS server staples hsm-ocsp's answers (openssl s_client -status).

deploy/nginx/hsm-ocsp-stapling.conf is run as shipped, with its paths, names and
responder address pointed at this test's CA, certificates and responder.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import ROOT
from .support.ca import CASetup, build_ca
from .support.ca import write_config as write_responder_config
from .support.nginx import Nginx, start_nginx
from .support.server import RunningServer, free_port, start_server
from .support.softhsm import SoftHSM

STAPLING_CONF = ROOT / "deploy" / "nginx" / "hsm-ocsp-stapling.conf"
SITES = ("good", "revoked", "file")


def site_config(
    site_dir: Path, name: str, listen_port: int, responder_port: int, stapling_file: Path | None
) -> str:
    """The shipped server block for one site (SNI name ``{name}.test``)."""
    text = STAPLING_CONF.read_text()
    replacements = {
        "listen 443 ssl;": f"listen 127.0.0.1:{listen_port} ssl;",
        "server_name www.example.com;": f"server_name {name}.test;",
        "/etc/ssl/www.example.com/": f"{site_dir}/",
        "ssl_stapling_responder http://127.0.0.1:8080/;": (
            f"ssl_stapling_responder http://127.0.0.1:{responder_port}/;"
        ),
    }
    for old, new in replacements.items():
        assert old in text, f"{STAPLING_CONF.name} no longer has {old!r}"
        text = text.replace(old, new)
    if stapling_file is not None:
        text = text.replace(
            "ssl_stapling on;", f"ssl_stapling on;\n    ssl_stapling_file {stapling_file};"
        )
    return text


def s_client_status(port: int, server_name: str, ca: Path) -> str:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is not installed")
    command = [
        openssl,
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-servername",
        server_name,
        "-status",
        "-CAfile",
        str(ca),
        "-verify_return_error",
    ]
    done = subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20, check=False
    )
    assert done.returncode == 0, f"s_client failed: {done.stderr}{done.stdout}"
    return done.stdout


def wait_for_staple(port: int, server_name: str, ca: Path, tries: int = 20) -> str:
    """nginx fetches the staple after the first handshake, asynchronously: retry."""
    output = ""
    for _ in range(tries):
        output = s_client_status(port, server_name, ca)
        if "OCSP Response Status:" in output:
            return output
        time.sleep(0.3)
    return output


@dataclasses.dataclass
class StaplingSite:
    setup: CASetup
    responder: RunningServer
    nginx: Nginx


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, softhsm: SoftHSM) -> Iterator[StaplingSite]:
    base = tmp_path_factory.mktemp("stapling")
    setup = build_ca(base / "ca", softhsm)
    ca = setup.ca
    responder_port, tls_port = free_port(), free_port()
    config = write_responder_config(
        base / "hsm-ocsp.toml", {"root": setup}, port=responder_port, validity='"1h"'
    )
    leaves = {name: ca.issue(f"{name}.test") for name in SITES}
    ca.revoke(leaves["revoked"], "-crl_reason", "keyCompromise")
    ca.revoke(leaves["file"], "-crl_reason", "superseded")
    responder = start_server(config, responder_port, base / "hsm-ocsp.log")
    blocks = []
    try:
        for name, leaf in leaves.items():
            site_dir = base / name
            site_dir.mkdir()
            (site_dir / "fullchain.pem").write_bytes(leaf.read_bytes() + ca.cert_path.read_bytes())
            shutil.copy(ca.dir / f"{name}.test.key", site_dir / "privkey.pem")
            shutil.copy(ca.cert_path, site_dir / "ca.pem")
            stapling_file = None
            if name == "file":
                # A response fetched from hsm-ocsp ahead of time, stapled as it is.
                stapling_file = site_dir / "ocsp.der"
                command: list[str | Path] = [
                    "openssl",
                    "ocsp",
                    "-issuer",
                    ca.cert_path,
                    "-cert",
                    leaf,
                    "-url",
                    responder.url,
                    "-CAfile",
                    ca.cert_path,
                    "-respout",
                    stapling_file,
                ]
                out = subprocess.run(
                    command, capture_output=True, text=True, timeout=20, check=True
                ).stdout
                assert ": revoked" in out, out
            blocks.append(site_config(site_dir, name, tls_port, responder_port, stapling_file))
        nginx = start_nginx(base / "nginx", "\n".join(blocks), tls_port)
    except BaseException:
        responder.stop()
        raise
    yield StaplingSite(setup, responder, nginx)
    nginx.stop()
    responder.stop()


def test_good_certificate_is_stapled_good(site: StaplingSite) -> None:
    output = wait_for_staple(site.nginx.port, "good.test", site.setup.ca.cert_path)
    assert "OCSP Response Status: successful" in output, output
    assert "Cert Status: good" in output
    assert "Responder Id:" in output
    assert "Next Update:" in output
    assert "Verify return code: 0 (ok)" in output
    # ssl_stapling_verify on: nginx checked the delegated responder's signature.
    assert "OCSP_basic_verify() failed" not in site.nginx.error_log


def test_revoked_certificate_is_not_stapled_and_nginx_says_why(site: StaplingSite) -> None:
    outputs = [s_client_status(site.nginx.port, "revoked.test", site.setup.ca.cert_path)]
    deadline = time.monotonic() + 6
    message = 'certificate status "revoked" in the OCSP response'
    while message not in site.nginx.error_log and time.monotonic() < deadline:
        time.sleep(0.3)
        outputs.append(s_client_status(site.nginx.port, "revoked.test", site.setup.ca.cert_path))
    assert message in site.nginx.error_log
    outputs.append(s_client_status(site.nginx.port, "revoked.test", site.setup.ca.cert_path))
    for output in outputs:
        assert "OCSP response: no response sent" in output
        assert "Cert Status: good" not in output


def test_revoked_answer_from_hsm_ocsp_is_stapled_from_a_file(site: StaplingSite) -> None:
    output = s_client_status(site.nginx.port, "file.test", site.setup.ca.cert_path)
    assert "OCSP Response Status: successful" in output, output
    assert "Cert Status: revoked" in output
    assert "Revocation Reason: superseded" in output
