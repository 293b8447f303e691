"""The proxy's version, read in one place from its installed package metadata, whose one
source is `version` in pyproject.toml."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["VERSION"]

try:
    VERSION = version("llm-failover-proxy")
except PackageNotFoundError:  # a source tree that was never installed
    VERSION = "0+unknown"
