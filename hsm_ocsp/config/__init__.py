"""The operator's settings and the process's set-up: the configuration file (every
error names the file and the key), the PIN (from a variable or a file, never argv),
logging, and what a reload may change.

May import: the standard library, cryptography, and ``hsm_ocsp.core``.
"""
