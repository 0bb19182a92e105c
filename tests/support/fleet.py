"""A fleet on loopback for the tests: signing hosts and keyless edges as real ``serve``
processes sharing one redis-server, and what the tests ask of them."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from .ca import CASetup, write_config
from .scrape import metric
from .server import RunningServer, free_port, start_server
from .watch import until

__all__ = ["body_for", "edge_host", "filled", "metric", "ready", "signing_host"]


def ready(server: RunningServer) -> bool:
    try:
        with urllib.request.urlopen(server.url + "readyz", timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.HTTPError, OSError):
        return False


def signing_host(
    tmp_path: Path,
    setup: CASetup,
    redis_url: str,
    name: str,
    index: Path | None = None,
    crl: Path | None = None,
) -> RunningServer:
    """``crl``: the CA served from that CRL file (and its new_certs_dir), not its index."""
    port = free_port()
    config = write_config(
        tmp_path / f"{name}.toml",
        {"root": setup},
        port=port,
        server=f'workers = 2\nstate_dir = "{tmp_path / name}"\n\n[store]\nredis = "{redis_url}"',
        crls=None if crl is None else {"root": crl},
    )
    if index is not None:  # a copy of the CA's index, as another host holds it
        config.write_text(config.read_text().replace(str(setup.ca.index), str(index)))
    return start_server(config, port, tmp_path / f"{name}.log")


def edge_host(tmp_path: Path, setup: CASetup, redis_url: str, name: str = "edge") -> RunningServer:
    port = free_port()
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\nworkers = 2\nstate_dir = "{tmp_path / name}"\n\n'
        f'[store]\nredis = "{redis_url}"\n\n'
        f'[[ca]]\nname = "root"\ncertificate = "{setup.ca.cert_path}"\n'
        f'responder_certificate = "{setup.responder_cert}"\n'
    )  # no [token], no key, no index: an edge
    return start_server(config, port, tmp_path / f"{name}.log", ready=False)


def body_for(setup: CASetup, name: str, algorithm: str = "sha1") -> bytes:
    return setup.request(name, algorithm)


def filled(server: RunningServer, setup: CASetup) -> None:
    entries = len(setup.ca.index.read_text().splitlines())
    until(lambda: metric(server, 'hsm_ocsp_signatures_total{reason="fill"}') >= 2 * entries, 60)
