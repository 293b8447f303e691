"""Errors the proxy returns to clients, in OpenAI's shape (`proxy.api.anthropic` has
Anthropic's).

Every client-visible error is an `ApiError` (`proxy.core.errors`): a status, an OpenAI-style
type and code, and a message that says what was wrong and what to do. Nothing else reaches
a client; in particular never a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from proxy.core.errors import ApiError
from proxy.listener import Answer

__all__ = ["error_answer", "error_body", "internal_error"]


def error_body(message: str, type: str, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def error_answer(err: ApiError, extra_headers: Mapping[str, str] | None = None) -> Answer:
    return Answer(
        err.status,
        {**err.headers, **(extra_headers or {})},
        error_body(err.message, err.type, err.code, err.param),
    )


def internal_error() -> Answer:
    """The answer to a request that hit a bug: the details are in the log, not the client's."""
    return error_answer(
        ApiError(
            500,
            "The proxy hit an internal error; it has been logged. Retry the request.",
            type="server_error",
            code="internal_error",
        )
    )
