"""Whether a token can sign now, as both ways of reaching it report it: the Token on
its own thread and the TokenProcess that speaks to a signer process."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["TokenState"]


class TokenState:
    """Up or down, the last error in words, and who wants to hear of a change."""

    def __init__(self) -> None:
        self._up = False
        self.last_error: str | None = None
        self.on_state_change: Callable[[bool], None] | None = None
        self.on_sign: Callable[[float], None] | None = None  # seconds of one C_Sign
        # (sessions opened again, calls tried again) a token ridden out: not failures
        self.on_recover: Callable[[int, int], None] | None = None

    @property
    def up(self) -> bool:
        """True while the token is connected and the last call worked."""
        return self._up

    def _set_up(self, value: bool) -> None:
        changed = value != self._up
        self._up = value
        if changed and self.on_state_change is not None:
            self.on_state_change(value)
