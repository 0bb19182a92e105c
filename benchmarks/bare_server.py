"""The HTTP ceiling: a bare aiohttp server answering a fixed body, N processes.

    python benchmarks/bare_server.py --port 8081 --size 1500 --workers 2

Every worker binds 127.0.0.1:PORT with SO_REUSEPORT and runs the event loop
``hsm-ocsp serve`` runs (uvloop), as hsm-ocsp does, reads the request body and
answers the same fixed bytes with the OCSP content type. Used by
benchmarks/run.py only.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hsm_ocsp.server.worker import new_event_loop


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    body = bytes(args.size)

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/ocsp-response")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    for _ in range(args.workers - 1):
        if os.fork() == 0:
            break
    else:  # the first process: take its children with it
        signal.signal(signal.SIGTERM, lambda *_: os.killpg(0, signal.SIGKILL))
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
