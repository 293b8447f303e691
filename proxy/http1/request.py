"""Building a request's bytes: where it goes (`Target`) and its headers, checked before a
byte is sent.

A request is one bytes object: method, the target's cached request line and `Host`
(plus `Proxy-Authorization` for plain HTTP through a proxy), headers, length, body.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from proxy.http1.egress import Egress, ProxyURL
from proxy.http1.errors import InvalidHeader

__all__ = ["Headers", "Target", "encode_headers", "header_problem", "parse_target"]

# RFC 9110 5.1 (a token) and 5.5 (field values: no CTL but HTAB).
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

# (host, port, tls, proxy): connections are pooled per target *and* the way to it.
PoolKey = tuple[str, int, bool, ProxyURL | None]


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed URL: the pool key and the request line's text after the method."""

    key: PoolKey
    line: bytes  # b" /path HTTP/1.1\r\nHost: host\r\n" (+ Proxy-Authorization)


def parse_target(url: str, egress: Egress) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    host = parts.hostname
    ascii_host = host if host.isascii() else host.encode("idna").decode("ascii")
    shown = f"[{ascii_host}]" if ":" in ascii_host else ascii_host
    host_header = shown if port == (443 if tls else 80) else f"{shown}:{port}"
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    proxy = egress.proxy_for(host, port, tls)
    extra = ""
    if proxy is not None and not tls:
        # Plain HTTP through a proxy: the absolute URL on the request line, and the
        # proxy's credentials on every request (a CONNECT tunnel sends them once).
        path = f"http://{host_header}{path}"
        if proxy.authorization is not None:
            extra = f"Proxy-Authorization: {proxy.authorization}\r\n"
    line = f" {path} HTTP/1.1\r\nHost: {host_header}\r\n{extra}"
    return Target((host, port, tls, proxy), line.encode("ascii"))


def header_problem(name: str, value: str) -> str | None:
    """Why a header cannot be sent (a phrase completing "request header NAME ..."), or None."""
    if not _TOKEN.fullmatch(name):
        return "has a name that is not an HTTP token (letters, digits and !#$%&'*+-.^_`|~)"
    if _CONTROL.search(value):
        return "has a control character (a line break, NUL...) in its value"
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return "has a character outside Latin-1 in its value"
    return None


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """`Name: value\\r\\n` lines; raises InvalidHeader (naming the header, never its value)
    for one that cannot be sent."""
    if isinstance(headers, Headers):
        return headers.encoded
    out = []
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name) or _CONTROL.search(value):
            raise InvalidHeader(name, header_problem(name, value) or "cannot be sent")
        out.append(f"{name}: {value}\r\n")
    text = "".join(out)
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        for name, value in headers.items():
            if problem := header_problem(name, value):
                raise InvalidHeader(name, problem) from None
        raise  # pragma: no cover - every header encodes alone, so the join does too


class Headers(Mapping[str, str]):
    """Request headers that do not change between calls (a vendor's own): checked and
    encoded once, not on every request. Raises InvalidHeader like a request would."""

    __slots__ = ("_items", "encoded")

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._items = dict(headers)
        self.encoded = encode_headers(self._items)

    def __getitem__(self, name: str) -> str:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def plus(self, extra: Mapping[str, str]) -> Headers:
        """These headers and `extra` (per call, e.g. a trace context): only `extra` is encoded."""
        if not extra.keys().isdisjoint(self._items):
            return Headers({**self._items, **extra})
        both = Headers.__new__(Headers)
        both._items = {**self._items, **extra}
        both.encoded = self.encoded + encode_headers(extra)
        return both
