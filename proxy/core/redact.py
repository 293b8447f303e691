"""Keeping credentials out of what the proxy logs, relays or shows a client.

Vendors echo keys back in error messages ("Incorrect API key provided: sk-proj-****abcd"),
Gemini puts the key in the URL, some errors quote a bearer token. Everything the proxy
builds from vendor text goes through `clean`; vendor bytes relayed as they are (an
in-stream error event) go through `redact`.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MAX_MATCH_CHARS", "clean", "redact", "redact_text"]

MAX_MATCH_CHARS: Final = 4000  # how much of a vendor message is ever looked at
_MAX_MESSAGE_CHARS: Final = 300

# Key-like tokens: OpenAI/Anthropic-style keys, Groq, Google API keys and OAuth tokens, AWS
# access key ids, bearer tokens, and credentials in URL query strings.
_SECRET_RE: Final = re.compile(
    r"\b(?:sk|rk|pk)-[\w\-*.]{4,}"
    r"|\bgsk_[\w*]{4,}"
    r"|\bAIza[\w\-]{10,}"
    r"|\b(?:AKIA|ASIA)[A-Z0-9]{12,}"
    r"|\bya29\.[\w\-.]+"
    r"|(?i:bearer)\s+[\w\-.~+/=*]{8,}"
    r"|(?i:[?&](?:key|api[-_]?key|token|access_token|sig|signature))=[^\s&\"']+"
)
_SPACE_RE: Final = re.compile(r"[\s\x00-\x1f\x7f]+")


def redact_text(text: str, secret: str | None) -> str:
    """`text` with key-shaped tokens and the literal `secret` (a vendor's own credential,
    whatever its shape: an Azure key is 32 bare hex digits) replaced."""
    text = _SECRET_RE.sub("[redacted]", text)
    if secret:
        text = text.replace(secret, "[redacted]")
    return text


def redact(data: bytes, secret: str | None) -> bytes:
    """`redact_text` for vendor bytes relayed as they are."""
    return redact_text(data.decode("utf-8", "replace"), secret).encode()


def clean(text: str, limit: int = _MAX_MESSAGE_CHARS) -> str:
    """One line of vendor text, safe to log and show: whitespace and control characters
    folded, key-shaped tokens redacted, at most `limit` characters."""
    text = _SPACE_RE.sub(" ", text[:MAX_MATCH_CHARS]).strip()
    text = _SECRET_RE.sub("[redacted]", text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
