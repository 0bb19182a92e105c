"""EAP-TLS: FreeRADIUS checks each user's certificate with OCSP
(``ocsp { enable = yes; softfail = no }``) and ``eapol_test`` is the 802.1X client, both
real, on 127.0.0.1, against ``serve`` with two workers. Two CAs: one with a delegated
responder certificate, one that signs its answers with its own key (with its
certificate in them, the default for a root, or without); good, revoked and unknown
certificates; FreeRADIUS with and without nonces."""

from __future__ import annotations

from pathlib import Path

import pytest

from .support import freeradius
from .support.ca import CASetup, build_ca, write_config
from .support.server import free_port, start_server
from .support.softhsm import SoftHSM

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not freeradius.available(), reason="freeradius and eapoltest missing"),
]

CLIENT = """
[ client ]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
subjectKeyIdentifier = hash
"""


def _users(setup: CASetup) -> dict[str, tuple[Path, Path]]:
    """A TLS client certificate of each status (the unknown one is not in the index)."""
    ca = setup.ca
    ca.cnf.write_text(ca.cnf.read_text() + CLIENT)
    users = {}
    for status in ("good", "revoked", "unknown"):
        pem = ca.issue(f"user-{status}", extensions="client")
        users[status] = (pem, ca.dir / f"user-{status}.key")
    ca.revoke(users["revoked"][0], "-crl_reason", "keyCompromise")
    serial = f"{ca.serial_of(users['unknown'][0]):X}"
    lines = ca.index.read_text().splitlines(keepends=True)
    ca.index.write_text("".join(line for line in lines if f"\t{serial}\t" not in line))
    return users


@pytest.mark.parametrize("include", ["auto", "false"])
def test_freeradius_eap_tls_takes_good_and_refuses_revoked_and_unknown(
    tmp_path: Path, softhsm: SoftHSM, include: str
) -> None:
    delegated = build_ca(tmp_path / "delegated", softhsm, name="Delegated Responder CA")
    own = build_ca(tmp_path / "own", softhsm, name="Own Key CA", delegated=False)
    users = {"delegated": _users(delegated), "own": _users(own)}
    server_cert = delegated.ca.issue("radius")  # serverAuth
    trust = tmp_path / "trust.pem"
    trust.write_bytes(delegated.ca.cert_path.read_bytes() + own.ca.cert_path.read_bytes())
    port = free_port()
    state = f'workers = 2\nstate_dir = "{tmp_path / "state"}"'
    config = write_config(
        tmp_path / "config.toml", {"delegated": delegated, "own": own}, port=port, server=state
    )
    if include != "auto":  # the own-key CA only (the delegated one has a responder cert)
        text = config.read_text().replace(
            'name = "own"', f'name = "own"\ninclude_ca_certificate = {include}'
        )
        config.write_text(text)
    responder = start_server(config, port, tmp_path / "responder.log")
    radius = []
    try:
        results = {}
        for nonce in (True, False):
            server = freeradius.FreeRadius(tmp_path / f"radius-{nonce}", free_port())
            server.directory.mkdir()
            server.configure(
                ca=trust,
                cert=server_cert,
                key=delegated.ca.dir / "radius.key",
                ocsp_url=responder.url,
                nonce=nonce,
            )
            server.start()
            radius.append(server)
            for signer, made in users.items():
                for status, (cert, key) in made.items():
                    accepted = server.authenticate(f"{signer}-{status}", trust, cert, key)
                    results[signer, status, nonce] = accepted
    finally:
        for server in radius:
            server.stop()
        responder.stop()
    print(f"include_ca_certificate = {include}: {results}")
    said = "".join(server.log.read_text() for server in radius)
    # Refused for what the answers said, not for anything else (four of each: two CAs,
    # with and without a nonce; the own-key CA's answers without its certificate are
    # refused before their status is read).
    statuses = 4 if include == "auto" else 2
    for status in ("good", "revoked", "unknown"):
        assert said.count(f"ocsp: Cert status: {status}") == statuses, status
    assert ("signer certificate not found" in said) is (include == "false")
    for (signer, status, nonce), accepted in results.items():
        expected = status == "good" and (signer == "delegated" or include == "auto")
        assert accepted is expected, (signer, status, nonce, accepted)
