"""The ``hsm-ocsp`` command, one module per sub-command: serve (in ``main``), keygen,
csr, check, demo. Each prints one clear line for a failure, never a traceback.

May import: every other layer.
"""
