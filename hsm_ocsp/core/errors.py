"""One error hierarchy; each message says what went wrong and what to do."""

from __future__ import annotations

__all__ = [
    "EXIT_CRASHED",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "ConfigError",
    "HsmOcspError",
    "IndexFormatError",
    "MalformedRequestError",
    "TokenError",
    "exit_code",
]

# Every command's exit code: 0 ok, 1 a failure at run time (the token refused, a
# port is taken), 2 bad usage or configuration (the message names the file and key).
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
# A worker that ended on an exception no handler expected (its supervisor
# replaces it; ``serve`` itself never exits with this).
EXIT_CRASHED = 70


class HsmOcspError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(HsmOcspError):
    """The configuration is wrong; the message names the file and the key."""

    def __init__(self, path: object, key: str, problem: str) -> None:
        self.path = str(path)
        self.key = key
        self.problem = problem
        super().__init__(f"{self.path}: {key}: {problem}")


class IndexFormatError(HsmOcspError):
    """An OpenSSL index file could not be read or parsed.

    ``transient`` is True when the same file may read well on the next try (out
    of descriptors or memory, caught while it was being written): it is read
    again on the next tick instead of being set aside as broken.
    """

    def __init__(
        self, path: object, line: int | None, problem: str, *, transient: bool = False
    ) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        self.transient = transient
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class TokenError(HsmOcspError):
    """The PKCS#11 module, token, session or key is not usable.

    ``retryable`` is False when trying again cannot help and may harm: a wrong
    PIN (each try counts towards the token's lock-out), a missing key.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class MalformedRequestError(HsmOcspError):
    """The bytes are not an OCSP request this responder accepts."""


def exit_code(exc: HsmOcspError) -> int:
    """2 for what the operator must fix in the configuration or the command line,
    1 for the rest."""
    return EXIT_USAGE if isinstance(exc, (ConfigError, IndexFormatError)) else EXIT_FAILURE
