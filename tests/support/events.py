"""A listener that writes down what it hears: the token's events and a status source's,
given to their constructors as the server gives its own."""

from __future__ import annotations

from hsm_ocsp.core.errors import IndexFormatError
from hsm_ocsp.core.index import IndexSnapshot


class Heard:
    def __init__(self) -> None:
        self.reloads: list[tuple[IndexSnapshot, int | None]] = []
        self.errors: list[IndexFormatError] = []
        self.refusals: list[str] = []
        self.states: list[bool] = []
        self.signatures: list[float] = []
        self.recoveries: list[tuple[int, int]] = []

    def reloaded(self, snapshot: IndexSnapshot, crl_number: int | None) -> None:
        self.reloads.append((snapshot, crl_number))

    def failed(self, error: IndexFormatError) -> None:
        self.errors.append(error)

    def refused(self, reason: str) -> None:
        self.refusals.append(reason)

    def token_state(self, up: bool) -> None:
        self.states.append(up)

    def token_signed(self, seconds: float) -> None:
        self.signatures.append(seconds)

    def token_recovered(self, sessions: int, retries: int) -> None:
        self.recoveries.append((sessions, retries))
