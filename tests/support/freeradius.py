"""FreeRADIUS (Debian's ``freeradius`` 3.2) doing EAP-TLS with its OCSP check on, and
``eapol_test`` (Debian's ``eapoltest``) as the 802.1X client: a real server and a real
client on 127.0.0.1, as a Wi-Fi or wired network checks a user's certificate.

The server runs from a copy of Debian's configuration with its own listener, an EAP
module that does TLS only (``ocsp { enable = yes; softfail = no }``, the responder's URL
given), and no privilege drop (the tests run as root), stopped by its PID."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from .server import stop_process

FREERADIUS = shutil.which("freeradius", path="/usr/sbin:/usr/bin") or "/usr/sbin/freeradius"
EAPOL_TEST = shutil.which("eapol_test") or "/usr/bin/eapol_test"
DEBIAN_CONF = Path("/etc/freeradius/3.0")
SECRET = "testing123"  # Debian's clients.conf: the client localhost


def available() -> bool:
    return Path(FREERADIUS).exists() and Path(EAPOL_TEST).exists() and DEBIAN_CONF.is_dir()


_SITE = """server default {{
    listen {{
        type = auth
        ipaddr = 127.0.0.1
        port = {port}
    }}
    authorize {{
        eap {{
            ok = return
        }}
    }}
    authenticate {{
        eap
    }}
    post-auth {{
    }}
}}
"""

_EAP = """eap {{
    default_eap_type = tls
    timer_expire = 60
    ignore_unknown_eap_types = no
    max_sessions = ${{max_requests}}
    tls-config tls-common {{
        private_key_file = {key}
        certificate_file = {cert}
        ca_file = {ca}
        cipher_list = "DEFAULT"
        tls_min_version = "1.2"
        tls_max_version = "1.2"
        ocsp {{
            enable = yes
            override_cert_url = yes
            url = "{url}"
            use_nonce = {nonce}
            timeout = 5
            softfail = no
        }}
    }}
    tls {{
        tls = tls-common
    }}
}}
"""


class FreeRadius:
    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.conf = directory / "raddb"
        self.log = directory / "freeradius.log"
        self.process: subprocess.Popen[bytes] | None = None

    def configure(self, *, ca: Path, cert: Path, key: Path, ocsp_url: str, nonce: bool) -> None:
        shutil.rmtree(self.conf, ignore_errors=True)
        shutil.copytree(DEBIAN_CONF, self.conf, symlinks=True)
        for site in (self.conf / "sites-enabled").iterdir():
            site.unlink()
        (self.conf / "sites-enabled" / "default").write_text(_SITE.format(port=self.port))
        (self.conf / "mods-enabled" / "eap").unlink()
        (self.conf / "mods-enabled" / "eap").write_text(
            _EAP.format(key=key, cert=cert, ca=ca, url=ocsp_url, nonce="yes" if nonce else "no")
        )
        radiusd = self.conf / "radiusd.conf"
        lines = radiusd.read_text().splitlines()
        kept = [line for line in lines if line.strip() not in ("user = freerad", "group = freerad")]
        radiusd.write_text("\n".join(kept) + "\n")

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [FREERADIUS, "-f", "-X", "-d", str(self.conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while b"Ready to process requests" not in self.log.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"freeradius did not start: {self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def authenticate(self, identity: str, ca: Path, cert: Path, key: Path) -> bool:
        """One EAP-TLS authentication by eapol_test; whether it succeeded."""
        conf = self.directory / f"eapol-{identity}.conf"
        conf.write_text(
            "network={\n    key_mgmt=WPA-EAP\n    eap=TLS\n"
            f'    identity="{identity}"\n    ca_cert="{ca}"\n    client_cert="{cert}"\n'
            f'    private_key="{key}"\n    eapol_flags=3\n}}\n'
        )
        done = subprocess.run(
            [
                EAPOL_TEST,
                "-c",
                str(conf),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-s",
                SECRET,
                "-t",
                "15",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ},
        )
        return done.returncode == 0 and "SUCCESS" in done.stdout
