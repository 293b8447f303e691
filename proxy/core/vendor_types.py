"""The vendor types the proxy speaks: one row per `type:` a vendor may have in the config.

The config loader checks vendors against this table (defaults, required keys); the
adapter registry (`proxy.vendors`) builds an adapter for each row's `adapter` kind and
checks at import that it covers every row; the classifier knows each type's error shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

__all__ = ["VENDOR_TYPES", "AdapterKind", "VendorType"]

# How a type is spoken: OpenAI-compatible pass-through, Anthropic natively, or through
# litellm's translation (an optional dependency, imported only when configured).
AdapterKind = Literal["openai_compat", "anthropic", "litellm"]


@dataclass(frozen=True, slots=True)
class VendorType:
    adapter: AdapterKind
    # What the vendor's own SDK calls its base URL, `{region}` filled from the vendor's
    # `region`; None: the operator must give one.
    default_base_url: str | None = None
    # Keys the type cannot work without, with what to tell the operator when one is missing.
    required: tuple[tuple[str, str], ...] = ()


VENDOR_TYPES: Mapping[str, VendorType] = MappingProxyType(
    {
        "openai": VendorType("openai_compat", "https://api.openai.com/v1"),
        "azure": VendorType(
            "openai_compat",
            required=(
                ("base_url", "your resource's endpoint, e.g. https://myres.openai.azure.com"),
                ("api_version", 'the data-plane api-version, e.g. "2024-10-21"'),
            ),
        ),
        "mistral": VendorType("openai_compat", "https://api.mistral.ai/v1"),
        "anthropic": VendorType("anthropic", "https://api.anthropic.com"),
        "gemini": VendorType("litellm", "https://generativelanguage.googleapis.com"),
        "vertex": VendorType(
            "litellm",
            "https://{region}-aiplatform.googleapis.com",
            required=(
                ("project", "the Google Cloud project id"),
                ("region", "the Vertex AI location, e.g. us-east5 or global"),
            ),
        ),
        "bedrock": VendorType(
            "litellm",
            "https://bedrock-runtime.{region}.amazonaws.com",
            required=(("region", "the AWS region, e.g. us-east-1"),),
        ),
        "cohere": VendorType("litellm", "https://api.cohere.com"),
    }
)
