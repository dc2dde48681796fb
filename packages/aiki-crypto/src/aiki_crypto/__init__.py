"""Payload encryption codec (AES-256-GCM with a rotating key ring).

    from aiki_client import Client
    from aiki_crypto import AesGcmCodec, KeyRing

    client = Client(url, codec=AesGcmCodec(KeyRing.from_env("AIKI_KEYS")))

`python -m aiki_crypto new-key <id>` prints a new `id:<base64url key>` ring entry.
"""

from __future__ import annotations

from aiki_crypto.__about__ import __version__ as __version__
from aiki_crypto._codec import AesGcmCodec as AesGcmCodec
from aiki_crypto._keyring import KeyRing as KeyRing

__all__ = ("AesGcmCodec", "KeyRing", "__version__")

# show the public path in reprs and docs (aiki_crypto.KeyRing, not aiki_crypto._keyring.KeyRing)
for _cls in (AesGcmCodec, KeyRing):
    _cls.__module__ = __name__
