"""Signed answers kept outside one process: every worker of a host reads the same
store, so an answer signed once serves them all, and a restart with the same state
directory starts warm.

May import: lmdb, and ``hsm_ocsp.core`` and ``hsm_ocsp.config``. Never aiohttp,
python-pkcs11 or prometheus_client.
"""
