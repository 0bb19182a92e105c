"""The index is watched: changes are served within about a second, SIGHUP forces a reload."""

from __future__ import annotations

import base64
import signal
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from cryptography.x509 import ocsp as x509_ocsp

from hsm_ocsp.pkcs11.key_lookup import KeySpec

from .support.ca import CASetup, write_config
from .support.requests import build_request
from .support.server import free_port


def status(url: str, setup: CASetup, name: str, method: str = "POST") -> x509_ocsp.OCSPCertStatus:
    der = build_request([(setup.ca.certificate, setup.serial(name))])
    if method == "GET":
        req = urllib.request.Request(url + urllib.parse.quote(base64.b64encode(der), safe=""))
    else:
        req = urllib.request.Request(
            url, data=der, headers={"Content-Type": "application/ocsp-request"}
        )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return x509_ocsp.load_der_ocsp_response(resp.read()).certificate_status


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_revocation_by_openssl_ca_is_served_within_seconds(
    tmp_path: Path, ca_setup: CASetup, serve: object, method: str
) -> None:
    port = free_port()
    config = write_config(tmp_path / "c.toml", {"root": ca_setup}, port=port)
    server = serve(config, port, tmp_path / "server.log")  # type: ignore[operator]
    fresh = ca_setup.ca.issue("fresh")
    ca_setup.certs["fresh"] = fresh
    deadline = time.monotonic() + 5
    while status(server.url, ca_setup, "fresh", method) is not x509_ocsp.OCSPCertStatus.GOOD:
        assert time.monotonic() < deadline, "new certificate not served as good"
        time.sleep(0.1)
    # cached as good now; openssl ca rewrites index.txt (new inode) on revoke
    ca_setup.ca.revoke(fresh, "-crl_reason", "keyCompromise")
    started = time.monotonic()
    while status(server.url, ca_setup, "fresh", method) is not x509_ocsp.OCSPCertStatus.REVOKED:
        assert time.monotonic() - started < 3, "revocation not served within 3 s"
        time.sleep(0.05)
    # other entries were not disturbed
    assert status(server.url, ca_setup, "good", method) is x509_ocsp.OCSPCertStatus.GOOD


def test_sighup_forces_a_reload(tmp_path: Path, ca_setup: CASetup, serve: object) -> None:
    port = free_port()
    config = write_config(tmp_path / "c.toml", {"root": ca_setup}, port=port)
    log = tmp_path / "server.log"
    server = serve(config, port, log)  # type: ignore[operator]
    before = log.read_text().count("reloaded")
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while log.read_text().count("reloaded") == before:
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    assert server.process.poll() is None
    assert status(server.url, ca_setup, "keycompromise") is x509_ocsp.OCSPCertStatus.REVOKED


def test_a_change_the_producer_or_store_would_not_take_needs_a_restart(
    tmp_path: Path, ca_setup: CASetup
) -> None:
    """The producer and the store are set up once: a reload changing them is refused
    (naming the section), never taken in silence; a new validity is taken."""
    from hsm_ocsp.config.file import load_config
    from hsm_ocsp.config.reload import changes_needing_restart

    path = write_config(tmp_path / "c.toml", {"root": ca_setup})
    running = load_config(path)
    text = path.read_text()
    for more, named in (
        ("\n[producer]\nmax_signatures_per_second = 5\n", "producer"),
        ('\n[store]\nredis = "redis://127.0.0.1:1/0"\n', "store"),
    ):
        path.write_text(text + more)
        assert changes_needing_restart(running, load_config(path)) == [named]
    path.write_text(text.replace("[[ca]]\n", '[[ca]]\nvalidity = "2h"\n', 1))
    assert changes_needing_restart(running, load_config(path)) == []


def test_a_reload_is_handed_over_as_the_bytes_the_supervisor_accepted(tmp_path: Path) -> None:
    """What a child takes on SIGHUP: the numbered bytes the supervisor accepted, each
    number once; after a refusal the last accepted one still (a child that had not read
    it yet must find it), nothing new; nothing from a file it did not write whole."""
    from hsm_ocsp.config.handoff import Handoff, accept, accepted, discard

    child = Handoff(tmp_path)
    assert child.new() is None  # nothing accepted yet
    first = accept(tmp_path, b"[server]\nworkers = 2\n", 1)
    found = child.new()
    assert found is not None and found.number == 1 and found.text == "[server]\nworkers = 2\n"
    assert found.digest == first.digest
    child.took(found)
    assert child.new() is None  # taken once
    accept(tmp_path, b"[server]\nworkers = 2\n", 2)  # the same bytes, a new reload
    again = child.new()
    assert again is not None and again.number == 2
    # A refused reload writes nothing: reload 2 is still there for a child that had not
    # read it yet, and a child forked with the running configuration has it already.
    late = child.new()
    assert late is not None and late.number == 2
    assert Handoff(tmp_path).new() is None
    discard(tmp_path)  # a serve starting: a run before's reload is not ours
    assert child.new() is None
    accept(tmp_path, b"x = 1\n", 3)
    path = next(tmp_path.glob("reload-accepted.toml"))
    path.write_bytes(path.read_bytes().replace(b"x = 1", b"x = 2"))  # not the bytes accepted
    assert accepted(tmp_path) is None and child.new() is None


class _Token:
    """A token that records what it is asked: the keys it holds, what it signs."""

    def __init__(self) -> None:
        self.keys: dict[str, KeySpec] = {}
        self.signed: list[str] = []

    async def set_keys(self, specs: list[KeySpec]) -> None:
        self.keys = {spec.name: spec for spec in specs}

    async def sign(self, name: str, data: bytes) -> bytes:
        self.signed.append(name)
        return b"not a signature of the certificate's key"


async def test_a_new_key_is_proven_once_the_supervisor_proved_it_is_only_found(
    tmp_path: Path,
) -> None:
    """A reload the supervisor accepted has had its new key proven on the token (in a
    signer of its own): the producer finds it in its sessions and signs no second
    probe. Alone (no supervisor), the process proves it itself, and a key that does not
    fit its certificate is refused."""
    from hsm_ocsp.config.file import load_config
    from hsm_ocsp.core.errors import TokenError
    from hsm_ocsp.server.key_set import take_keys

    from .support.pki import OpenSSLCA

    ca = OpenSSLCA(tmp_path / "ca")
    path = tmp_path / "config.toml"
    path.write_text(
        f'[[ca]]\nname = "root"\ncertificate = "{ca.cert_path}"\n'
        f'index = "{ca.index}"\nkey = "pkcs11:token=t;object=new"\n'
    )
    config = load_config(path)
    accepted = _Token()
    await take_keys(accepted, config, proven=True)  # type: ignore[arg-type]
    assert list(accepted.keys) and accepted.signed == []
    alone = _Token()
    with pytest.raises(TokenError, match="does not belong"):
        await take_keys(alone, config)  # type: ignore[arg-type]
    assert alone.signed == list(accepted.keys)  # the probe, once, refused
