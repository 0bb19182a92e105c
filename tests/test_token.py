"""The token adapter: which failures are worth another try."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsm_ocsp.core.errors import TokenError
from hsm_ocsp.core.pkcs11_uri import parse_pkcs11_uri
from hsm_ocsp.core.signing import scheme_for_public_key
from hsm_ocsp.pkcs11.key_lookup import KeySpec
from hsm_ocsp.pkcs11.token import Token

from .support.softhsm import MODULE, SoftHSM

P11_KIT_CLIENT = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"


def token_for(softhsm: SoftHSM, module: str, pin: str) -> Token:
    uri, public_key = softhsm.make_key("ec-p256")
    spec = KeySpec("root", parse_pkcs11_uri(uri), scheme_for_public_key(public_key))
    return Token(module, pin, [spec], sign_timeout=5)


def test_wrong_pin_is_not_retried_and_not_shown(softhsm: SoftHSM) -> None:
    token = token_for(softhsm, MODULE, "99999999")
    try:
        with pytest.raises(TokenError) as info:
            token.open_blocking()
        assert not info.value.retryable
        assert "PIN is incorrect" in str(info.value)
        assert "99999999" not in str(info.value)
    finally:
        token.close()


def test_unreachable_token_is_retryable(
    softhsm: SoftHSM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Path(P11_KIT_CLIENT).exists(), "install p11-kit"
    monkeypatch.setenv("P11_KIT_SERVER_ADDRESS", f"unix:path={tmp_path / 'no-server'}")
    token = token_for(softhsm, P11_KIT_CLIENT, softhsm.pin)
    try:
        with pytest.raises(TokenError) as info:
            token.open_blocking()
        assert info.value.retryable
        assert not token.up
    finally:
        token.close()


def test_good_pin_opens_and_signs(softhsm: SoftHSM) -> None:
    token = token_for(softhsm, MODULE, softhsm.pin)
    try:
        token.open_blocking()
        assert token.up
        assert len(token.sign_blocking("root", b"data")) > 64  # DER ECDSA
    finally:
        token.close()
