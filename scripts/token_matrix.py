"""Re-measure which key algorithms pass the whole operator's path on each token here.

    python scripts/token_matrix.py            # as root, from the repository root

For SoftHSM, OpenCryptoki's soft token and tpm2-pkcs11 on swtpm (the Debian 12
packages the Makefile installs): for every algorithm keygen offers, the path the
tests run (keygen, csr, the CA signs, check, serve, openssl ocsp good and revoked).
A keygen the token refuses is shown as the one line the operator sees; a pass
shows the key's signing rate (one thread, one second). Prints a Markdown table.
Each token's daemons are started and stopped as in the tests.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hsm_ocsp.pkcs11.keys import ALGORITHMS
from tests.support.softhsm import (
    MODULE,
    use_softhsm_token,
)
from tests.support.tokens import TokenUnderTest, opencryptoki, operator_path, tpm2


def softhsm(directory: Path) -> Iterator[TokenUnderTest]:
    use_softhsm_token(directory / "softhsm2.conf", label="matrix", pin="24682468", so_pin="1357")
    yield TokenUnderTest("SoftHSM 2.6", MODULE, "matrix", "24682468", ALGORITHMS)


_RATE = """
import sys, time
from cryptography import x509
from hsm_ocsp.core.pkcs11_uri import parse_pkcs11_uri
from hsm_ocsp.core.signing import scheme_for_public_key
from hsm_ocsp.pkcs11.token import KeySpec, Token
module, pin, uri, pem = sys.argv[1:]
scheme = scheme_for_public_key(x509.load_pem_x509_certificate(open(pem, "rb").read()).public_key())
signer = Token(module, pin, [KeySpec("k", parse_pkcs11_uri(uri), scheme)])
signer.open_blocking()
done, stop = 0, time.monotonic() + 1.0
while time.monotonic() < stop:
    signer.sign_blocking("k", b"x" * 200)
    done += 1
print(done)
"""


def signing_rate(token: TokenUnderTest, algorithm: str, directory: Path) -> int:
    """Signatures a second of the key the path made: one thread, one second, a process of
    its own (python-pkcs11 holds one module a process)."""
    uri = f"pkcs11:token={token.label};object=ocsp-{algorithm}-{directory.name}"[:120]
    done = subprocess.run(
        [sys.executable, "-c", _RATE, token.module, token.pin, uri,
         str(directory / "responder.pem")],
        capture_output=True, text=True, check=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    return int(done.stdout)


def outcome(token: TokenUnderTest, algorithm: str, directory: Path) -> str:
    try:
        operator_path(token, algorithm, directory)
        return f"pass ({signing_rate(token, algorithm, directory)}/s)"
    except AssertionError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "failed"
        if "keygen" in str(exc).split(":", 1)[0]:
            return "refused: " + first.removeprefix("hsm-ocsp: ").split("): ", 1)[-1]
        return "FAIL: " + first[:120]


def main() -> int:
    tokens: list[Callable[[Path], Iterator[TokenUnderTest]]] = [
        softhsm,
        lambda _: opencryptoki(),
        tpm2,
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="hsm-ocsp-matrix-") as name:
        tmp = Path(name)
        for number, make in enumerate(tokens):
            with contextlib.ExitStack() as stack:
                directory = tmp / f"token{number}"
                directory.mkdir()
                generator = make(directory)
                token = next(generator)
                stack.callback(lambda g=generator: next(g, None))
                cells = []
                for algorithm in ALGORITHMS:
                    work = directory / algorithm
                    work.mkdir()
                    cells.append(outcome(token, algorithm, work))
                rows.append((token.name, cells))
    print("| token | " + " | ".join(ALGORITHMS) + " |")
    print("|---|" + "---|" * len(ALGORITHMS))
    for name, cells in rows:
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HSM_OCSP_PIN", "24682468")
    raise SystemExit(main())
