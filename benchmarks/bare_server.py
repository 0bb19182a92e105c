"""The HTTP ceiling: a bare aiohttp server answering a fixed body, N processes.

    python benchmarks/bare_server.py --port 8081 --size 1500 --workers 2

Every worker binds 127.0.0.1:PORT with SO_REUSEPORT, as ``hsm-ocsp serve``
does, reads the request body and answers the same fixed bytes with the OCSP
content type. Used by benchmarks/run.py only.
"""

from __future__ import annotations

import argparse
import os
import signal

from aiohttp import web


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
    web.run_app(app, host="127.0.0.1", port=args.port, reuse_port=True, access_log=None, print=None)


if __name__ == "__main__":
    main()
