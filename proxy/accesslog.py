"""One JSON line per request: what ops grep when a client says "it failed at 14:02".

Built with orjson and written through the `llmproxy.access` logger, and only when that
logger is enabled, so a deployment that turns access logs off pays nothing for them.
Never contains API keys or prompt text.

`llm-proxy serve` owns stderr's log format, so it hands the stream over with
`AccessLog.direct_to()`: lines are then written straight to it, one write per line,
skipping the LogRecord/handler/formatter round trip (about 4% of a pass-through
request's CPU). Anyone embedding the app keeps the plain logger path.
"""

from __future__ import annotations

import logging
import time
from typing import IO, Any

import orjson

__all__ = ["AccessLog"]

_logger = logging.getLogger("llmproxy.access")


class AccessLog:
    __slots__ = ()

    _stream: IO[bytes] | None = None

    @staticmethod
    def enabled() -> bool:
        return _logger.isEnabledFor(logging.INFO)

    @classmethod
    def direct_to(cls, stream: IO[bytes] | None) -> None:
        """Write lines straight to `stream` (None: back to the `llmproxy.access` logger)."""
        cls._stream = stream

    @classmethod
    def write(cls, record: dict[str, Any]) -> None:
        record["ts"] = round(time.time(), 3)
        stream = cls._stream
        if stream is None:
            _logger.info(orjson.dumps(record).decode())
            return
        stream.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        stream.flush()
