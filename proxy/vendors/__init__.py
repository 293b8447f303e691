"""Vendor adapters: one factory per adapter kind of `proxy.core.vendor_types`."""

from __future__ import annotations

from collections.abc import Callable

from proxy.config import VendorConfig
from proxy.core.vendor_types import VENDOR_TYPES, AdapterKind
from proxy.vendors.base import VendorAdapter

__all__ = ["make_adapter"]


def _openai(config: VendorConfig) -> VendorAdapter:
    from proxy.vendors.openai_compat import OpenAICompatAdapter

    return OpenAICompatAdapter(config)


def _anthropic(config: VendorConfig) -> VendorAdapter:
    from proxy.vendors.anthropic import AnthropicAdapter

    return AnthropicAdapter(config)


def _litellm(config: VendorConfig) -> VendorAdapter:
    from proxy.vendors.litellm_adapter import LiteLLMAdapter

    return LiteLLMAdapter(config)


# Factories import lazily: a translated vendor's dependencies (litellm costs seconds and
# ~200 MB) are paid only when such a vendor is configured.
_FACTORIES: dict[AdapterKind, Callable[[VendorConfig], VendorAdapter]] = {
    "openai_compat": _openai,
    "anthropic": _anthropic,
    "litellm": _litellm,
}


def make_adapter(config: VendorConfig) -> VendorAdapter:
    return _FACTORIES[VENDOR_TYPES[config.type].adapter](config)
