"""One JSON line per request: what ops grep when a client says "it failed at 14:02".

Built with orjson and written through the `llmproxy.access` logger, and only when that
logger is enabled, so a deployment that turns access logs off pays nothing for them.
Never contains API keys or prompt text.

`llm-proxy serve` owns stderr's log format, so it hands the stream over with
`AccessLog.direct_to()`: lines are then written straight to it, skipping the
LogRecord/handler/formatter round trip. Lines are written together every `FLUSH_S` (or
sooner, once `FLUSH_LINES` are held) rather than one system call per request, so at most
`FLUSH_S` of lines are lost in a crash; `flush()` runs at exit. Anyone embedding the app
keeps the plain logger path.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import time
from typing import IO, Any, ClassVar

import orjson

__all__ = ["FLUSH_LINES", "FLUSH_S", "AccessLog"]

FLUSH_S = 0.05
FLUSH_LINES = 256

_logger = logging.getLogger("llmproxy.access")


class AccessLog:
    __slots__ = ()

    _stream: ClassVar[IO[bytes] | None] = None
    _pending: ClassVar[list[bytes]] = []
    _flush_on: ClassVar[asyncio.AbstractEventLoop | None] = None  # a flush is scheduled there

    @staticmethod
    def enabled() -> bool:
        return _logger.isEnabledFor(logging.INFO)

    @classmethod
    def direct_to(cls, stream: IO[bytes] | None) -> None:
        """Write lines straight to `stream` (None: back to the `llmproxy.access` logger)."""
        cls.flush()
        cls._stream = stream

    @classmethod
    def write(cls, record: dict[str, Any], loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Log `record`; `loop`, the running loop if the caller has it at hand (saves a getpid)."""
        record["ts"] = round(time.time(), 3)
        stream = cls._stream
        if stream is None:
            _logger.info(orjson.dumps(record).decode())
            return
        line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        try:
            loop = loop or asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a script, a test): write at once
            cls.flush()
            stream.write(line)
            stream.flush()
            return
        pending = cls._pending
        pending.append(line)
        if len(pending) >= FLUSH_LINES:
            cls.flush()
        elif cls._flush_on is not loop:  # (a loop that closed before its flush ran counts as none)
            cls._flush_on = loop
            loop.call_later(FLUSH_S, cls.flush)

    @classmethod
    def flush(cls) -> None:
        """Write the lines held so far."""
        pending, stream = cls._pending, cls._stream
        if not pending or stream is None:
            cls._flush_on = None
            return
        cls._pending = []
        cls._flush_on = None
        stream.write(b"".join(pending))
        stream.flush()


atexit.register(AccessLog.flush)
