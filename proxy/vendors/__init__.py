"""Vendor adapters by `type`: the registry config validation and the gateway both read."""

from __future__ import annotations

from collections.abc import Callable

from proxy.config import VendorConfig
from proxy.vendors.base import VendorAdapter

__all__ = ["ADAPTERS", "make_adapter"]


def _openai(config: VendorConfig) -> VendorAdapter:
    from proxy.vendors.openai_compat import OpenAICompatAdapter

    return OpenAICompatAdapter(config)


def _anthropic(config: VendorConfig) -> VendorAdapter:
    from proxy.vendors.anthropic import AnthropicAdapter

    return AnthropicAdapter(config)


def _litellm(config: VendorConfig) -> VendorAdapter:
    from proxy.vendors.litellm_adapter import LiteLLMAdapter

    return LiteLLMAdapter(config)


# type -> factory. Factories import lazily: a translated vendor's dependencies (litellm
# costs seconds and ~200 MB) are paid only when such a vendor is configured.
# OpenAI-compatible wire formats (incl. Azure's URLs and Mistral) and Anthropic's are spoken
# natively on aiohttp; the others go through litellm's translation.
ADAPTERS: dict[str, Callable[[VendorConfig], VendorAdapter]] = {
    "openai": _openai,
    "azure": _openai,
    "mistral": _openai,
    "anthropic": _anthropic,
    "gemini": _litellm,
    "vertex": _litellm,
    "bedrock": _litellm,
    "cohere": _litellm,
}


def make_adapter(config: VendorConfig) -> VendorAdapter:
    return ADAPTERS[config.type](config)
