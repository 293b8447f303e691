"""Vendor adapters by `type`: the registry config validation and the gateway both read."""

from __future__ import annotations

from collections.abc import Callable

from proxy.config import VendorConfig
from proxy.vendors.base import VendorAdapter

__all__ = ["ADAPTERS", "make_adapter"]


def _openai(config: VendorConfig) -> VendorAdapter:
    from proxy.vendors.openai_compat import OpenAICompatAdapter

    return OpenAICompatAdapter(config)


# type -> factory. Factories import lazily: a translated vendor's dependencies (litellm
# costs seconds and ~200 MB) are paid only when such a vendor is configured.
ADAPTERS: dict[str, Callable[[VendorConfig], VendorAdapter]] = {"openai": _openai}


def make_adapter(config: VendorConfig) -> VendorAdapter:
    return ADAPTERS[config.type](config)
