"""What the proxy's spans are called and which attributes they carry: the OpenTelemetry
semantic conventions where one applies (HTTP server, GenAI client), `llmproxy.*` for
what only this proxy knows (deployments, outcome classes, admission, the relay).

Tables, checked at import against the tables they translate: a vendor type added to
`proxy.core.vendor_types` without a GenAI provider name here fails at start-up, not in a
trace weeks later.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from proxy.core.vendor_types import VENDOR_TYPES

__all__ = [
    "ADMISSION_SPAN",
    "GEN_AI_PROVIDERS",
    "OPERATIONS",
    "RELAY_SPAN",
    "REQUEST_PARAMS",
]

# gen_ai.provider.name (and the older gen_ai.system, which backends still read) of each
# vendor type. An OpenAI-compatible server of another maker is spoken to as OpenAI.
GEN_AI_PROVIDERS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "openai": "openai",
        "azure": "azure.ai.openai",
        "mistral": "mistral_ai",
        "anthropic": "anthropic",
        "gemini": "gcp.gemini",
        "vertex": "gcp.vertex_ai",
        "bedrock": "aws.bedrock",
        "cohere": "cohere",
    }
)

# gen_ai.operation.name of each proxied endpoint (`Endpoint.name`); an endpoint that is
# not a model call (a token count) has none.
OPERATIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "chat/completions": "chat",
        "completions": "text_completion",
        "embeddings": "embeddings",
        "messages": "chat",
        "responses": "chat",
    }
)

# Request fields recorded as gen_ai.request.* when the client set them (numbers only: no
# content). Each inbound API's name for the output budget maps to one attribute.
REQUEST_PARAMS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "max_tokens": "gen_ai.request.max_tokens",
        "max_completion_tokens": "gen_ai.request.max_tokens",
        "max_output_tokens": "gen_ai.request.max_tokens",
        "temperature": "gen_ai.request.temperature",
        "top_p": "gen_ai.request.top_p",
        "top_k": "gen_ai.request.top_k",
        "frequency_penalty": "gen_ai.request.frequency_penalty",
        "presence_penalty": "gen_ai.request.presence_penalty",
        "seed": "gen_ai.request.seed",
        "n": "gen_ai.request.choice.count",
    }
)

ADMISSION_SPAN: Final = "admission"  # the client's key and limits checked
RELAY_SPAN: Final = "relay"  # a stream relayed to the client after its commit point


def _check_tables() -> None:
    missing = sorted(set(VENDOR_TYPES) - set(GEN_AI_PROVIDERS))
    if missing:
        raise RuntimeError(f"proxy.tracing.conventions: no GenAI provider name for {missing}")


_check_tables()
