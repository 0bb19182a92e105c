"""The protocol and its rules, pure: no network, no files, no token, no processes.

DER reading and writing, OCSP request decoding and response encoding, the
``index.txt`` format, the status rules (which CA a CertID names, what to answer),
signature schemes, the responder-certificate profile, and the service that turns a
request into a reply (signing is handed in from outside, so the whole path runs
with a software signer in the tests). Also ``outbox.py``: the frames a process writes
in one event-loop turn, given to a stream handed in, in one write; and ``frames.py``,
the frames one read completes.

May import: the standard library, asn1crypto and cryptography. Never aiohttp,
python-pkcs11, prometheus_client, nor another layer of hsm_ocsp.
"""
