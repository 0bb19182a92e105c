"""hsm-ocsp: an RFC 6960 OCSP responder that signs on a PKCS#11 token."""

from .core.errors import ConfigError, HsmOcspError, IndexFormatError, TokenError

__all__ = ["ConfigError", "HsmOcspError", "IndexFormatError", "TokenError", "__version__"]
__version__ = "0.1.0"
