"""The ``hsm-ocsp`` command: serve, keygen, csr, check, store, revocations, demo."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .. import __version__
from ..core.errors import EXIT_USAGE, HsmOcspError, exit_code
from ..core.logs import setup_logging

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hsm-ocsp", description="OCSP responder on a PKCS#11 token"
    )
    parser.add_argument("--version", action="version", version=f"hsm-ocsp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the responder")
    serve.add_argument("--config", required=True, help="TOML configuration file")

    _add_key_commands(sub)
    check = sub.add_parser("check", help="check the token, keys, certificates and indexes")
    check.add_argument("--config", required=True)
    check.add_argument(
        "--warn-days",
        type=int,
        default=30,
        help="warn when the signing certificate has fewer days left and no next one (30)",
    )

    _add_record_commands(sub)

    demo = sub.add_parser("demo", help="make a demo token and CA, then serve them")
    demo.add_argument("--dir", default="demo", help="working directory (default ./demo)")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--no-serve", action="store_true", help="set up only, do not serve")
    demo.add_argument(
        "--status",
        choices=("index", "crl"),
        default="index",
        help="serve status from the CA's index.txt (default) or its CRL",
    )
    return parser


def _add_key_commands(sub: Any) -> None:
    """keygen and csr: the responder's key pair and its request, on the token."""
    keygen = sub.add_parser("keygen", help="make the responder key pair on the token")
    keygen.add_argument("--config", help="take the module and PIN from this config")
    keygen.add_argument("--module", help="PKCS#11 module (.so)")
    keygen.add_argument(
        "--key", required=True, help="RFC 7512 URI, e.g. pkcs11:token=ocsp;object=responder"
    )
    keygen.add_argument(
        "--id",
        help="CKA_ID in hex, e.g. 0x0102 (YubiHSM 2 allows 2 bytes); default: the URI's id, "
        "else 8 random bytes",
    )
    keygen.add_argument(
        "--algorithm",
        default="ec-p256",
        choices=["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "ed25519"],
    )

    csr = sub.add_parser("csr", help="write a PKCS#10 request signed by the token key")
    csr.add_argument("--config", help="take the module and PIN from this config")
    csr.add_argument("--module", help="PKCS#11 module (.so)")
    csr.add_argument("--key", required=True, help="RFC 7512 URI of the private key")
    csr.add_argument("--subject", required=True, help='e.g. "CN=ocsp.example.com,O=Example"')
    csr.add_argument("--out", help="file to write (default: standard output)")


def _add_record_commands(sub: Any) -> None:
    """store, revocations and audit: what a host keeps."""
    store = sub.add_parser("store", help="what the host's answer store holds")
    store_sub = store.add_subparsers(dest="store_command", required=True)
    stats = store_sub.add_parser(
        "stats", help="answers per CA and status, bytes, soonest nextUpdate"
    )
    stats.add_argument("--config", required=True)

    revocations = sub.add_parser("revocations", help="the revocations this host remembers")
    rev_sub = revocations.add_subparsers(dest="revocations_command", required=True)
    listed = rev_sub.add_parser("list", help="every remembered revocation, per CA")
    listed.add_argument("--config", required=True)
    forget = rev_sub.add_parser(
        "forget", help="stop remembering revocations (taken up at the next SIGHUP or start)"
    )
    forget.add_argument("--config", required=True)
    forget.add_argument("--ca", required=True, help="the [[ca]] name")
    forget.add_argument(
        "--serial", required=True, action="append", help="hexadecimal serial (repeatable)"
    )

    audit = sub.add_parser("audit", help="the audit trail of signatures")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify", help="check that no line of the trail was changed, removed or moved"
    )
    verify.add_argument("files", nargs="+", help="the trail's files, oldest first")


# Each command's module and function, imported when it runs (serve's import is heavy).
_COMMANDS = {
    "keygen": ("keygen", "run_keygen"),
    "csr": ("csr", "run_csr"),
    "check": ("check", "run_check"),
    "store": ("store", "run_store_stats"),
    "revocations": ("revocations", "run_revocations"),
    "audit": ("audit", "run_audit_verify"),
    "demo": ("demo", "run_demo"),
}


def _serve(args: argparse.Namespace) -> int:
    from ..config.file import load_config
    from ..server.supervisor import run_server

    config = load_config(args.config)
    setup_logging(config.server.log_format)
    return run_server(config)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0 ok, 1 runtime failure, 2 bad usage or configuration."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command in _COMMANDS:
            module, function = _COMMANDS[args.command]
            run: Callable[[argparse.Namespace], int] = getattr(
                importlib.import_module(f"{__package__}.{module}"), function
            )
            return run(args)
    except HsmOcspError as exc:
        print(f"hsm-ocsp: {exc}", file=sys.stderr)
        return exit_code(exc)
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE
