"""Helpers for the tests, the benchmarks and the scripts: real parts (a SoftHSM
token, CAs made with ``openssl ca``, the server as a process), never shipped in the
package."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
