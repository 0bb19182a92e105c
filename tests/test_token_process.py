"""The signer process: signs for its worker, survives its own death, dies with the worker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from hsm_ocsp.core.errors import TokenError
from hsm_ocsp.core.pkcs11_uri import parse_pkcs11_uri
from hsm_ocsp.core.signing import scheme_for_public_key, verify
from hsm_ocsp.pkcs11.key_lookup import KeySpec
from hsm_ocsp.pkcs11.signer_process import TokenProcess

from .support.events import Heard
from .support.softhsm import MODULE, SoftHSM


def _spec(softhsm: SoftHSM, algorithm: str) -> tuple[KeySpec, object]:
    uri, public_key = softhsm.make_key(algorithm)
    scheme = scheme_for_public_key(public_key)
    return KeySpec("root", parse_pkcs11_uri(uri), scheme), public_key


@pytest.fixture
async def rsa_token(softhsm: SoftHSM) -> AsyncIterator[tuple[TokenProcess, object]]:
    spec, public_key = _spec(softhsm, "rsa-2048")
    token = TokenProcess(MODULE, softhsm.pin, [spec], sign_timeout=5)
    try:
        yield token, public_key
    finally:
        await token.aclose()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat").read_text().split()[2]
    return status != "Z"


async def test_signs_in_a_child_whose_argv_has_no_pin(
    rsa_token: tuple[TokenProcess, object], softhsm: SoftHSM
) -> None:
    token, public_key = rsa_token
    heard = token.events = Heard()  # not opened yet: as if given to the constructor
    states, seconds = heard.states, heard.signatures
    await token.open()
    assert token.up and states == [True]
    signature = await token.sign("root", b"to be signed")
    assert isinstance(public_key, rsa.RSAPublicKey)
    verify(public_key, token.keys["root"].scheme, b"to be signed", signature)
    assert len(seconds) == 1 and 0 < seconds[0] < 5
    assert token.pid is not None and token.pid != os.getpid()
    cmdline = Path(f"/proc/{token.pid}/cmdline").read_bytes()
    assert b"hsm_ocsp.pkcs11.signer_child" in cmdline
    assert softhsm.pin.encode() not in cmdline


async def test_wrong_pin_fails_without_retry_and_without_the_pin(softhsm: SoftHSM) -> None:
    spec, _ = _spec(softhsm, "ec-p256")
    token = TokenProcess(MODULE, "55501234", [spec], sign_timeout=5)
    try:
        with pytest.raises(TokenError) as info:
            await token.open()
        assert not info.value.retryable
        assert "PIN is incorrect" in str(info.value)
        assert "55501234" not in str(info.value) and "55501234" not in repr(token)
        assert not token.up
    finally:
        await token.aclose()


async def test_a_killed_child_fails_its_calls_and_is_replaced(
    rsa_token: tuple[TokenProcess, object],
) -> None:
    token, public_key = rsa_token
    await token.open()
    first = token.pid
    assert first is not None
    pending = [asyncio.create_task(token.sign("root", b"%d" % i)) for i in range(20)]
    await asyncio.sleep(0)
    os.kill(first, signal.SIGKILL)
    results = await asyncio.gather(*pending, return_exceptions=True)
    failed = [r for r in results if isinstance(r, TokenError)]
    assert failed, "calls held by the killed child must fail, not hang"
    assert all(isinstance(r, (bytes, TokenError)) for r in results)
    assert not token.up
    assert "signer process ended" in (token.last_error or "")
    # A new child comes on a later call, at most once a second.
    deadline = time.monotonic() + 5
    while True:
        try:
            signature = await token.sign("root", b"again")
            break
        except TokenError:
            assert time.monotonic() < deadline, "no new signer process within 5 s"
            await asyncio.sleep(0.2)
    assert token.up and token.pid not in (None, first)
    assert not _alive(first)
    assert isinstance(public_key, rsa.RSAPublicKey)
    verify(public_key, token.keys["root"].scheme, b"again", signature)


async def test_aclose_stops_the_child(rsa_token: tuple[TokenProcess, object]) -> None:
    token, _ = rsa_token
    await token.open()
    pid = token.pid
    assert pid is not None
    await token.aclose()
    assert token.pid is None
    assert not _alive(pid)


def test_child_dies_with_its_worker(softhsm: SoftHSM, tmp_path: Path) -> None:
    uri, _ = softhsm.make_key("ec-p256")
    script = textwrap.dedent(
        f"""
        import asyncio, os, sys
        from hsm_ocsp.core.pkcs11_uri import parse_pkcs11_uri
        from hsm_ocsp.core.signing import scheme_for_public_key
        from hsm_ocsp.pkcs11.token import KeySpec
        from hsm_ocsp.pkcs11.signer_process import TokenProcess

        async def main():
            from cryptography.hazmat.primitives.asymmetric import ec
            spec = KeySpec("root", parse_pkcs11_uri({uri!r}),
                           scheme_for_public_key(ec.generate_private_key(ec.SECP256R1()).public_key()))
            token = TokenProcess({MODULE!r}, os.environ["HSM_OCSP_PIN"], [spec])
            await token.open()
            print(token.pid, flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    worker = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert worker.stdout is not None
        with worker.stdout:
            child = int(worker.stdout.readline())
        assert _alive(child)
        worker.kill()
        worker.wait()
        deadline = time.monotonic() + 5
        while _alive(child):
            assert time.monotonic() < deadline, "signer process outlived its worker"
            time.sleep(0.05)
    finally:
        worker.kill()
        worker.wait()


async def test_a_child_stuck_in_a_call_is_replaced(softhsm: SoftHSM) -> None:
    """SIGSTOP stands in for a C_Sign that never returns."""
    spec, _ = _spec(softhsm, "ec-p256")
    # A timeout long enough for a busy machine to start the child and log in.
    timeout = 2.0
    token = TokenProcess(MODULE, softhsm.pin, [spec], sign_timeout=timeout)
    try:
        await token.open()
        stuck = token.pid
        assert stuck is not None
        os.kill(stuck, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(TokenError, match="did not answer"):
            await token.sign("root", b"a")
        # The call ends at its timeout, not when (if ever) the token answers.
        assert not token.up and time.monotonic() - started < 2 * timeout
        # While that call is unanswered, others fail at once rather than queue...
        with pytest.raises(TokenError, match="hung"):
            await token.sign("root", b"b")
        # ...and after two timeouts the stuck child is killed and another signs.
        deadline = time.monotonic() + 10 * timeout
        while True:
            try:
                await token.sign("root", b"c")
                break
            except TokenError:
                assert time.monotonic() < deadline, "the stuck signer was not replaced"
                await asyncio.sleep(0.1)
        assert token.up and token.pid != stuck
        assert not _alive(stuck)
    finally:
        await token.aclose()


async def test_a_pool_of_sessions_signs_on_each_and_stops_them_all(softhsm: SoftHSM) -> None:
    """token.sessions = 2: two signer processes, each signing (the producer would
    otherwise hold a token that signs in parallel to one signature at a time)."""
    from hsm_ocsp.pkcs11.token_pool import TokenPool

    spec, public_key = _spec(softhsm, "rsa-2048")
    heard = Heard()
    pool = TokenPool(
        MODULE, softhsm.pin, [spec], sessions=2, sign_timeout=5, log_format="text", events=heard
    )
    try:
        await pool.open()
        assert pool.up and all(m.up for m in pool.members)
        assert heard.states == [True]  # the token's state: told once, not once a member
        signed = heard.signatures
        signed.clear()  # the keys proven as the members opened
        data = [os.urandom(32) for _ in range(40)]
        signatures = await asyncio.gather(*(pool.sign("root", d) for d in data))
        for one, signature in zip(data, signatures, strict=True):
            verify(public_key, spec.scheme, one, signature)
        assert len(signed) == 40  # every signature timed, whichever member made it
        pids = {m.pid for m in pool.members}
        assert len(pids) == 2 and None not in pids
        calls = [m._next_id for m in pool.members]  # the open, then signatures
        assert all(n > 5 for n in calls) and sum(calls) == 40 + 2, calls  # both signed
    finally:
        await pool.aclose()
    assert not any(_alive(pid) for pid in pids if pid is not None)


async def test_calls_of_one_turn_go_together_and_their_replies_are_not_held(
    rsa_token: tuple[TokenProcess, object],
) -> None:
    """Sixty calls made in one turn of the loop reach the child in one write; it
    sends the replies of such a batch together, but none waits much longer than a
    couple of milliseconds for the signatures after it: the first replies arrive
    while the child still signs the rest."""
    token, public_key = rsa_token
    await token.open()
    data = [os.urandom(32) for _ in range(60)]  # RSA-2048: tens of ms for all of them
    calls = [asyncio.ensure_future(token.sign("root", one)) for one in data]
    _done, pending = await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
    assert pending, "every reply came at once: the first ones were held for the last"
    for one, signature in zip(data, await asyncio.gather(*calls), strict=True):
        verify(public_key, token.keys["root"].scheme, one, signature)


async def test_a_slow_tokens_replies_are_never_held_for_the_next_signature(
    softhsm: SoftHSM, tmp_path: Path
) -> None:
    """With 50 ms a signature, each reply of a batch goes back as soon as it is
    signed: holding it for the next one would add a whole signature to its wait."""
    from .support.slow_token import build_shim

    spec, public_key = _spec(softhsm, "ec-p256")
    token = TokenProcess(str(build_shim(tmp_path, 50)), softhsm.pin, [spec], sign_timeout=10)
    try:
        await token.open()
        calls = [asyncio.ensure_future(token.sign("root", bytes([n]))) for n in range(4)]
        done, _pending = await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1, "the first reply waited for the second signature"
        for n, signature in enumerate(await asyncio.gather(*calls)):
            verify(public_key, spec.scheme, bytes([n]), signature)
    finally:
        await token.aclose()
