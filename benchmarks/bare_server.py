"""The HTTP ceiling: a bare aiohttp server answering a fixed body, N processes.

    python benchmarks/bare_server.py --port 8081 --size 1500 --workers 2
    python benchmarks/bare_server.py --port 8081 --size 1500 --sign resp-ec-p256

Every worker binds 127.0.0.1:PORT with SO_REUSEPORT and runs the event loop
``hsm-ocsp serve`` runs (uvloop), as hsm-ocsp does, reads the request body and
answers the same fixed bytes with the OCSP content type. Used by
benchmarks/run.py only.

``--sign LABEL``: the ceiling of a responder that signs every answer (a nonce).
Each process logs in to run.py's bench token on its own and, for every request,
signs 300 bytes with the key LABEL in the handler itself, as run.py's raw loop
does, before it answers: HTTP and one signature, and nothing else. With as many
processes as the raw loop, no aiohttp responder that signs each answer with that
many signing processes can do better on the same CPUs.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from hsm_ocsp.server.event_loop import new_event_loop


def signer(label: str) -> Callable[[], bytes]:
    """Sign 300 bytes with ``label`` as run.py's raw loop does, on a session of this process."""
    import run

    session, key, scheme, mechanism = run.signing_key(label)
    data = secrets.token_bytes(300)  # about the size of a ResponseData

    def sign() -> bytes:
        assert session is not None  # held open as long as this process serves
        return bytes(scheme.finish(key.sign(scheme.prepare(data), mechanism=mechanism)))

    return sign


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sign", metavar="LABEL", help="sign for every request with this key")
    args = parser.parse_args()
    body = bytes(args.size)
    for _ in range(args.workers - 1):
        if os.fork() == 0:
            break
    else:  # the first process: take its children with it
        signal.signal(signal.SIGTERM, lambda *_: os.killpg(0, signal.SIGKILL))
    sign = None if args.sign is None else signer(args.sign)  # after the fork: a session each

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        if sign is not None:
            sign()
        return web.Response(body=body, content_type="application/ocsp-response")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    web.run_app(
        app,
        host="127.0.0.1",
        port=args.port,
        reuse_port=True,
        access_log=None,
        print=None,
        loop=new_event_loop(),
    )


if __name__ == "__main__":
    main()
