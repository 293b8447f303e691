"""One JSON line per request: what ops grep when a client says "it failed at 14:02".

Built with orjson and written through the `llmproxy.access` logger, and only when that
logger is enabled, so a deployment that turns access logs off pays nothing for them.
Never contains API keys or prompt text.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

__all__ = ["AccessLog"]

_logger = logging.getLogger("llmproxy.access")


class AccessLog:
    __slots__ = ()

    @staticmethod
    def enabled() -> bool:
        return _logger.isEnabledFor(logging.INFO)

    @staticmethod
    def write(record: dict[str, Any]) -> None:
        record["ts"] = round(time.time(), 3)
        _logger.info(orjson.dumps(record).decode())
