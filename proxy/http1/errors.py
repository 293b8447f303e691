"""The exceptions of the upstream client: what a caller of `Pool.request` and `Response`
must be ready for, besides OSError (connection refused, reset, TLS) and TimeoutError.

Every class here derives from `DescribedError`: its message says what went wrong in
words an operator can act on, and never holds a URL, a header value or a credential, so
the transport classifier may put it in the access log's `detail` as it is.
"""

from __future__ import annotations

__all__ = [
    "BodyIncomplete",
    "DescribedError",
    "EgressProxyError",
    "InvalidHeader",
    "PoolTimeout",
    "ProtocolError",
    "RemoteDisconnected",
    "ResponseTooLarge",
]


class DescribedError(Exception):
    """Marks an exception whose message is safe to log and to show (see the module doc)."""


class ProtocolError(DescribedError):
    """The server's answer is not valid HTTP/1.1 (or uses what this client does not speak).

    The connection is closed, never reused: after a framing error nobody knows where the
    next answer would start."""


class BodyIncomplete(ProtocolError):
    """The connection ended before the answer did (a truncated answer)."""


class ResponseTooLarge(ProtocolError):
    """The answer passed one of the pool's caps: `max_body` (a body read whole) or
    `max_decoded` (what a compressed body inflates to). The connection is closed."""


class RemoteDisconnected(DescribedError, ConnectionResetError):
    """The server closed the connection before any byte of its answer arrived."""


class PoolTimeout(DescribedError, TimeoutError):
    """No connection to the vendor was free within the pool wait: every one allowed by the
    pool's limit was in use. The vendor was never contacted, so this says nothing about
    its health; another deployment may have room."""


class EgressProxyError(DescribedError, ConnectionError):
    """The egress (corporate) proxy did not open the way to the vendor: it could not be
    reached, asked for credentials (407), or refused the tunnel. The vendor was not
    reached. `status` is the proxy's HTTP status when it answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @classmethod
    def refused(
        cls, proxy: str, target: str, status: int, reason: str, *, with_credentials: bool
    ) -> EgressProxyError:
        """The proxy at `proxy` (host:port) answered `status` instead of opening the way
        to `target`: say what it wants, and what to change."""
        answer = f"{status} {reason}".rstrip()
        if status != 407:
            return cls(
                f"the egress proxy at {proxy} refused the tunnel to {target}: {answer}", status
            )
        if with_credentials:
            return cls(
                f"the egress proxy at {proxy} rejected the credentials in the proxy URL ({answer})",
                status,
            )
        return cls(
            f"the egress proxy at {proxy} requires authentication: put user:password in the "
            "proxy URL (http://user:password@host:port)",
            status,
        )


class InvalidHeader(DescribedError, ValueError):
    """A request header that cannot be sent: a name that is not an HTTP token, or a value
    with a control character (CR, LF, NUL...) or a character outside Latin-1.

    Raised by `Pool.request` before anything is sent. `header` is the offending name; the
    message names it (cut to 64 characters) and never quotes the value, which may be a
    credential. When the header came from a client, answer the client with a 400."""

    def __init__(self, name: str, problem: str) -> None:
        self.header = name
        super().__init__(f"request header {name[:64]!r} {problem}")
