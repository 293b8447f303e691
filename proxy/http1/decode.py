"""Undoing a Content-Encoding (gzip or deflate) in bounded steps, under a size cap.

A compressed body can inflate a thousandfold: 100 KB of gzip can hold 100 MiB. Inflating
a whole read at once would put all of it in memory before anyone could say no, so the
connection takes the output a step at a time (`take`), only as fast as the reader
consumes it, and the total is checked against the cap at every step: a bomb fails as
soon as it passes the cap, with one step in memory.
"""

from __future__ import annotations

import zlib
from typing import Final

from proxy.http1.errors import ProtocolError, ResponseTooLarge

__all__ = ["ENCODINGS", "STEP", "Inflater"]

# The most bytes one `take` produces.
STEP: Final = 64 * 1024

# Content-Encoding values this client undoes (lower case).
ENCODINGS: Final = frozenset({"gzip", "x-gzip", "deflate"})


def _zlib_wrapped(b0: int, b1: int) -> bool:
    """Whether two bytes are a zlib header (RFC 1950: method 8, checksum of the pair)."""
    return b0 & 0x0F == 8 and (b0 << 8 | b1) % 31 == 0


class Inflater:
    """One answer's decompressor: `add` compressed bytes, `take` inflated ones."""

    __slots__ = ("_fed", "_input", "_z", "limit", "more", "produced")

    def __init__(self, encoding: str, limit: int) -> None:
        # "deflate" is zlib-wrapped by the standard, but some servers send it raw: which
        # one it is is decided from its first two bytes (see `add`).
        self._z = None if encoding == "deflate" else zlib.decompressobj(47)
        self._input = b""
        self._fed = False
        self.limit = limit
        self.produced = 0
        # True while `take` may have output to give (input left, or the last step was full).
        self.more = False

    def add(self, data: bytes) -> None:
        self._input = self._input + data if self._input else data
        self._fed = True
        if self._z is None:
            if len(self._input) < 2:
                return
            wrapped = _zlib_wrapped(self._input[0], self._input[1])
            self._z = zlib.decompressobj(15 if wrapped else -15)
        self.more = True

    def take(self) -> bytes:
        """At most `STEP` inflated bytes. Raises ProtocolError for data that is not what
        its encoding says, ResponseTooLarge once the total passes `limit`."""
        z = self._z
        assert z is not None  # `more` is set only once there is a decompressor
        try:
            out = z.decompress(self._input, STEP)
        except zlib.error:
            raise ProtocolError("the answer's compressed body is corrupt") from None
        # Bytes after the compressed data's end are not part of it.
        self._input = b"" if z.eof else z.unconsumed_tail
        self.more = bool(self._input) or len(out) == STEP
        self.produced += len(out)
        if self.produced > self.limit:
            raise ResponseTooLarge(
                f"the answer's compressed body inflates to more than {self.limit} bytes "
                "(the vendor's max_decompressed_bytes)"
            )
        return out

    def finish(self) -> bytes:
        """The last inflated bytes once the body has ended and `more` is False. Raises
        ProtocolError if the compressed data stops short of its own end."""
        if not self._fed:
            return b""
        z = self._z
        tail = z.flush() if z is not None else b""
        if z is None or not z.eof:
            raise ProtocolError("the answer's compressed body ends before its compressed data")
        self.produced += len(tail)
        return tail
