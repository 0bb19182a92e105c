"""The token: key generation and look-up, sessions and signing on one thread, the
signer process that owns the module, the login gate that never retries a refused PIN,
the cryptography key class that signs on the token, and which keys a configuration
signs with.

May import: python-pkcs11, ``hsm_ocsp.core`` and ``hsm_ocsp.config``. Never aiohttp
or prometheus_client.
"""
