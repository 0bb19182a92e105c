"""A Unix-socket proxy in front of Redis that cuts one connection once it has carried a
given number of bytes from Redis: a real network fault in the middle of a long read
(an edge's first copy of the fleet's answers, say)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path


class CutProxy:
    def __init__(self, listen: Path, upstream: Path, cut_after: int) -> None:
        self.listen = listen
        self.upstream = upstream
        self.cut_after = cut_after  # bytes from upstream, then that connection is cut
        self.cuts = 0
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._stop = threading.Event()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"unix://{self.listen}"

    def start(self) -> CutProxy:
        self.listen.unlink(missing_ok=True)
        self._server.bind(str(self.listen))
        self._server.listen(16)
        self._server.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(str(self.upstream))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        carried = 0
        try:
            while data := source.recv(1 << 14):
                if counted:
                    carried += len(data)
                    with self._lock:
                        cut = self.cuts == 0 and carried > self.cut_after
                        self.cuts += cut
                    if cut:  # the fault: this connection dies mid-read, once
                        break
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            end.close()
