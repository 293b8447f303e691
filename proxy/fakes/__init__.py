"""Fake LLM vendors with fault injection, for ``llm-proxy demo``, the tests and benchmarks.

Real HTTP servers on a real socket (no mocks), so the proxy's pooling, timeouts and
stream parsing are exercised exactly as against a vendor. See ``base`` for the fault
model and ``openai`` for the OpenAI wire format.
"""

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
from proxy.fakes.openai import OPENAI_ERRORS, FakeOpenAI

__all__ = [
    "ERROR_KINDS",
    "OPENAI_ERRORS",
    "PRESETS",
    "Call",
    "FakeOpenAI",
    "FakeStats",
    "FakeVendor",
    "Fault",
    "RecordedRequest",
    "Route",
    "Usage",
]
