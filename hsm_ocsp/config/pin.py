"""The PIN in a running responder: read once, out of the environment, never in a core dump.

``serve`` reads the PIN before any worker or signer starts and removes its
variable from the environment, so no child (a signer, a worker, anything they
run) inherits it; the workers get it in memory and pass it to their signer
over a socket. Every process that holds it cannot dump core
(pkcs11/core_dumps.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
from pathlib import Path

from ..core.errors import ConfigError
from .model import DEFAULT_MODULE, DEFAULT_PIN_ENV, Config, TokenConfig
from .section import read_toml

__all__ = ["module_and_pin", "read_pin", "take_pin"]


def take_pin(config: Config) -> str:
    """The PIN as the config says; its environment variable is gone afterwards.

    The value is also overwritten where exec put it (what /proc/PID/environ
    shows, and what every forked worker would copy), not only unset.
    """
    pin = read_pin(config.token, config.path)
    name = config.token.pin_env
    if name is not None and name in os.environ:
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None)
            libc.getenv.restype = ctypes.c_void_p
            value = libc.getenv(name.encode())
            if value:
                ctypes.memset(value, 0, len(os.environb.get(name.encode(), b"")))
        os.environ.pop(name, None)
    return pin


def read_pin(token: TokenConfig, config_path: object = "<config>") -> str:
    """The user PIN, from the file or the environment variable the config names.

    The PIN is never put into an error message.
    """
    if token.pin_file is not None:
        try:
            info = token.pin_file.stat()
        except OSError as exc:
            raise ConfigError(
                config_path, "token.pin_file", f"cannot read {token.pin_file}: {exc.strerror}"
            ) from None
        if info.st_mode & stat.S_IROTH:
            raise ConfigError(
                config_path,
                "token.pin_file",
                f"{token.pin_file} is readable by everyone; chmod o-rwx it",
            )
        try:
            pin = token.pin_file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError):
            raise ConfigError(
                config_path, "token.pin_file", f"cannot read {token.pin_file}"
            ) from None
        if not pin:
            raise ConfigError(config_path, "token.pin_file", f"{token.pin_file} is empty")
        return pin
    env = token.pin_env or DEFAULT_PIN_ENV
    env_pin = os.environ.get(env)
    if not env_pin:
        raise ConfigError(config_path, "token.pin_env", f"environment variable {env} is not set")
    return env_pin


def _token_strings(path: Path, table: object) -> dict[str, str]:
    """``module``, ``pin_env`` and ``pin_file`` of a ``[token]`` table, those given."""
    if not isinstance(table, dict):
        raise ConfigError(path, "token", "must be a table")
    values: dict[str, str] = {}
    for key in ("module", "pin_env", "pin_file"):
        value = table.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(path, f"token.{key}", "must be a str")
        if value is not None:
            values[key] = value
    return values


def module_and_pin(config_path: str | None, module: str | None) -> tuple[str, str]:
    """The PKCS#11 module and user PIN for a command-line tool.

    With a config file, its ``[token]`` table gives the module (``--module``
    wins) and says where the PIN is; only that table is read, so a config whose
    certificates do not exist yet still works. Without one, ``--module`` is
    required and the PIN comes from ``HSM_OCSP_PIN``. The PIN is never taken
    from the command line.
    """
    if config_path is None:
        if module is None:
            raise ConfigError("(command line)", "--module", "give --module or --config")
        return module, read_pin(TokenConfig(module=module), "(environment)")
    path = Path(config_path)
    data = read_toml(path)
    values = _token_strings(path, data.get("token", {}))
    pin_file = values.get("pin_file")
    token_config = TokenConfig(
        module=module or values.get("module", DEFAULT_MODULE),
        pin_env=None if pin_file else values.get("pin_env", DEFAULT_PIN_ENV),
        pin_file=None if pin_file is None else path.parent / pin_file,
    )
    return token_config.module, read_pin(token_config, path)
