"""Opaque pagination cursors that punish sloppy URL handling.

Every cursor contains ``+``, ``/`` and ``=``: a client that forgets to URL-encode it
sends ``+`` as a space, and strict decoding answers that with a 400 instead of a wrong
page. A digest over the seed and the stream invalidates any cursor not issued here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

_MAGIC = b"\xfb\xff\xbf"  # encodes to "+/+/"
_POSITION_BYTES = 4
_LIMIT_BYTES = 2
_DIGEST_BYTES = 5  # 3 + 4 + 2 + 5 = 14 bytes, and 14 % 3 == 2 forces one "=" of padding
_BODY_BYTES = _POSITION_BYTES + _LIMIT_BYTES
_LENGTH = len(_MAGIC) + _BODY_BYTES + _DIGEST_BYTES


class CursorCodec:
    def __init__(self, seed: int) -> None:
        self._salt = f"tap-analytics-sandbox/{seed}/".encode()

    def encode(self, scope: str, position: int, limit: int) -> str:
        """A cursor for the page of ``limit`` items from ``position`` in ``scope``."""
        body = position.to_bytes(_POSITION_BYTES, "big") + limit.to_bytes(
            _LIMIT_BYTES, "big"
        )
        digest = hashlib.sha256(self._salt + scope.encode() + body).digest()[
            :_DIGEST_BYTES
        ]
        return base64.b64encode(_MAGIC + body + digest).decode("ascii")

    def decode(self, scope: str, cursor: str) -> tuple[int, int] | None:
        """Position and limit of a cursor issued for ``scope``, else None."""
        try:
            raw = base64.b64decode(cursor, validate=True)
        except (binascii.Error, ValueError):
            return None
        if len(raw) != _LENGTH or not raw.startswith(_MAGIC):
            return None
        body = raw[len(_MAGIC) : len(_MAGIC) + _BODY_BYTES]
        position = int.from_bytes(body[:_POSITION_BYTES], "big")
        limit = int.from_bytes(body[_POSITION_BYTES:], "big")
        if self.encode(scope, position, limit) != cursor:
            return None
        return position, limit
