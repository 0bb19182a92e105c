"""The running responder: the aiohttp application and its handlers, index watching,
metrics and the access log, the connection cap, the workers and their supervisor.

May import: aiohttp, prometheus_client, and ``hsm_ocsp.core``, ``hsm_ocsp.config``,
``hsm_ocsp.pkcs11``. Never ``hsm_ocsp.cli``.
"""
