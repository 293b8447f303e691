"""Fake LLM vendors with fault injection, for ``llm-proxy demo``, the tests and benchmarks.

Real HTTP servers on a real socket (no mocks), so the proxy's pooling, timeouts and
stream parsing are exercised exactly as against a vendor. See ``base`` for the fault
model; ``openai``, ``anthropic`` and ``gemini`` for the wire formats; ``answers`` and
``schema_values`` for what the fakes answer (tool calls, structured JSON), which ``chat``,
``responses`` (OpenAI's Responses API) and ``messages`` (Anthropic) render.
"""

from proxy.fakes.anthropic import ANTHROPIC_ERRORS, FakeAnthropic
from proxy.fakes.base import (
    ERROR_KINDS,
    PRESETS,
    Call,
    FakeStats,
    FakeVendor,
    Fault,
    RecordedRequest,
    Route,
    Usage,
)
from proxy.fakes.gemini import GEMINI_ERRORS, FakeGemini
from proxy.fakes.openai import OPENAI_ERRORS, FakeAzureOpenAI, FakeOpenAI

#: Fake vendor classes by vendor type.
FAKES: dict[str, type[FakeVendor]] = {
    "openai": FakeOpenAI,
    "azure": FakeAzureOpenAI,
    "anthropic": FakeAnthropic,
    "gemini": FakeGemini,
}

__all__ = [
    "ANTHROPIC_ERRORS",
    "ERROR_KINDS",
    "FAKES",
    "GEMINI_ERRORS",
    "OPENAI_ERRORS",
    "PRESETS",
    "Call",
    "FakeAnthropic",
    "FakeAzureOpenAI",
    "FakeGemini",
    "FakeOpenAI",
    "FakeStats",
    "FakeVendor",
    "Fault",
    "RecordedRequest",
    "Route",
    "Usage",
]
