"""``hsm-ocsp serve`` as a real process, stopped by PID."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def stop_process(process: subprocess.Popen[bytes], grace: float = 10) -> None:
    """SIGTERM; SIGKILL if it has not ended after ``grace`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclasses.dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def producer_pid(self) -> int | None:
        """The host's producer (serve with several workers), from its last "ready" line."""
        found = re.findall(r"producer (\d+) ready", self.log.read_text())
        return int(found[-1]) if found else None

    def worker_pids(self) -> list[int]:
        """The live children of serve that are workers, not the producer."""
        pid = self.process.pid
        kids = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        producer = self.producer_pid()
        return [kid for kid in kids if kid != producer]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to the whole process group: no worker outlives a test."""
        stop_process(self.process)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


def start_server(
    config: Path,
    port: int,
    log: Path,
    timeout: float = 30,
    *,
    max_fds: int | None = None,
    ready: bool = True,
) -> RunningServer:
    """``hsm-ocsp serve`` as a real process, waited on until /readyz says 200
    (``ready=False``: until /healthz does).

    ``max_fds`` sets its descriptor limit (``ulimit -n``).
    """

    def limit_fds() -> None:
        if max_fds is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max_fds, max_fds))

    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "hsm_ocsp", "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() reaches every worker
            preexec_fn=limit_fds,
        )
    server = RunningServer(process, port, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited {process.returncode}: {log.read_text()}")
        try:
            path = "readyz" if ready else "healthz"
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=1) as r:
                if r.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.1)
    server.stop()
    raise AssertionError(f"server not ready in {timeout} s: {log.read_text()}")
