"""The error every layer raises when a request must be refused with a client-facing answer.

An `ApiError` is a status, an OpenAI-style type and code, and a message that says what was
wrong and what to do. The inbound API renders it in its own shape (OpenAI's or Anthropic's
error body); nothing else reaches a client, in particular never a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["ApiError"]


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
