"""Errors the proxy returns to clients, in the inbound API's own shape.

Every client-visible error is an `ApiError`: a status, an OpenAI-style type and code, and
a message that says what was wrong and what to do. Nothing else reaches a client; in
particular never a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web

from proxy.core.errors import ApiError

__all__ = ["ApiError", "error_body", "internal_error", "json_error"]


def error_body(message: str, type: str, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def json_error(err: ApiError, extra_headers: Mapping[str, str] | None = None) -> web.Response:
    headers = {**err.headers, **(extra_headers or {})}
    return web.Response(
        status=err.status,
        body=error_body(err.message, err.type, err.code, err.param),
        content_type="application/json",
        headers=headers,
    )


def internal_error() -> web.Response:
    """The answer to a request that hit a bug: the details are in the log, not the client's."""
    return json_error(
        ApiError(
            500,
            "The proxy hit an internal error; it has been logged. Retry the request.",
            type="server_error",
            code="internal_error",
        )
    )
