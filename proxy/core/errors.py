"""The error every layer raises when a request must be refused with a client-facing answer.

An `ApiError` is a status, an OpenAI-style type and code, and a message that says what was
wrong and what to do. The inbound API renders it in its own shape (OpenAI's or Anthropic's
error body); nothing else reaches a client, in particular never a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["ApiError", "Unsupported"]


class ApiError(Exception):
    """A request the proxy refuses or could not serve, with what the client should see."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})


class Unsupported(ApiError):
    """A deployment cannot serve this request as asked: its vendor cannot honour a field
    (`n`, `logprobs`, a hosted tool...) and no translation carries it.

    Raised by an adapter before anything is sent. The router skips that deployment (it
    says so in `x-proxy-attempts` as `unsupported`) and tries the next; only when no
    deployment of the group can serve the request does the client get this 400, which
    names the field and the vendor. Never counted against the vendor's health.
    """

    def __init__(self, field: str, vendor: str, detail: str) -> None:
        super().__init__(
            400,
            f"'{field}' cannot be served by vendor {vendor!r}: {detail}",
            code="unsupported_parameter",
            param=field,
        )
        self.field = field
        self.vendor = vendor
