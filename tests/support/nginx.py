"""nginx from Debian in front of a responder, started and stopped by PID."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .server import stop_process


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if found is None:
        pytest.fail("nginx is not installed: apt-get install nginx (Makefile DEBIAN_PACKAGES)")
    return found


@dataclasses.dataclass
class Nginx:
    """A foreground nginx master; stopped by its PID."""

    process: subprocess.Popen[bytes]
    prefix: Path
    port: int

    @property
    def error_log(self) -> str:
        return (self.prefix / "error.log").read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)


def start_nginx(prefix: Path, http_body: str, port: int, timeout: float = 10) -> Nginx:
    """Run nginx with ``http_body`` inside its http {} block, listening on ``port``."""
    binary = nginx_binary()
    prefix.mkdir(parents=True, exist_ok=True)
    temp = {name: prefix / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for directory in temp.values():
        directory.mkdir(exist_ok=True)
    # As root, workers would drop to "nobody", who cannot enter pytest's 0700 tmp dirs.
    user = "user root;" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process on;
worker_processes 1;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
{http_body}
}}
"""
    )
    base = [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    tested = subprocess.run([*base, "-t"], capture_output=True, text=True, check=False)
    assert tested.returncode == 0, f"nginx -t refused the config:\n{tested.stderr}"
    with (prefix / "stdout.log").open("wb") as out:
        process = subprocess.Popen(base, stdout=out, stderr=subprocess.STDOUT)
    server = Nginx(process, prefix, port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"nginx exited {process.returncode}:\n{server.error_log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise AssertionError(f"nginx did not listen on {port} in {timeout} s:\n{server.error_log}")
