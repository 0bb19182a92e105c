"""A remote token: ``p11-kit server`` in front of a SoftHSM token, loaded through
``p11-kit-client.so`` (as a network HSM's module is). Killing the server's process
group is a real token loss; SIGSTOP a real hang."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

CLIENT_MODULE = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"
AVAILABLE = os.path.exists(CLIENT_MODULE) and os.path.exists("/usr/bin/p11-kit")


class P11KitServer:
    """``p11-kit server`` for one token, in its own process group."""

    def __init__(self, socket_path: Path, provider: str, token_label: str) -> None:
        self.socket = socket_path
        self.provider = provider
        self.token_label = token_label
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"unix:path={self.socket}"

    def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [
                "p11-kit",
                "server",
                "-f",
                "-n",
                str(self.socket),
                "--provider",
                self.provider,
                f"pkcs11:token={self.token_label}",
            ],
            start_new_session=True,  # its own process group: killpg reaches its children
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError("p11-kit server did not create its socket")
            time.sleep(0.02)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGCONT)
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)
        self.process = None
