"""Whether a token can sign now, as both ways of reaching it report it: the Token on
its own thread and the TokenProcess that speaks to a signer process."""

from __future__ import annotations

from typing import Protocol

__all__ = ["SILENT", "NoTokenEvents", "SignsOnly", "TokenEvents", "TokenState"]


class TokenEvents(Protocol):
    """Who hears what a token does (the metrics), given to its constructor."""

    def token_state(self, up: bool) -> None:
        """The token became usable (True) or not."""

    def token_signed(self, seconds: float) -> None:
        """One C_Sign took ``seconds``."""

    def token_recovered(self, sessions: int, retries: int) -> None:
        """A token ridden out, not failures: sessions opened again, calls tried again."""


class NoTokenEvents:
    """Told nothing: a token nobody listens to."""

    def token_state(self, up: bool) -> None:
        pass

    def token_signed(self, seconds: float) -> None:
        pass

    def token_recovered(self, sessions: int, retries: int) -> None:
        pass


SILENT: TokenEvents = NoTokenEvents()


class SignsOnly(NoTokenEvents):
    """``events`` told of signatures and recoveries only: a pool's other members, whose
    up or down is the first member's (told once)."""

    def __init__(self, events: TokenEvents) -> None:
        self._events = events

    def token_signed(self, seconds: float) -> None:
        self._events.token_signed(seconds)

    def token_recovered(self, sessions: int, retries: int) -> None:
        self._events.token_recovered(sessions, retries)


class TokenState:
    """Up or down, the last error in words, and who hears of a change (``events``)."""

    def __init__(self, events: TokenEvents | None = None) -> None:
        self._up = False
        self.last_error: str | None = None
        self.events = events if events is not None else SILENT

    @property
    def up(self) -> bool:
        """True while the token is connected and the last call worked."""
        return self._up

    def _set_up(self, value: bool) -> None:
        changed = value != self._up
        self._up = value
        if changed:
            self.events.token_state(value)
