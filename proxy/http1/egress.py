"""Which way a pool's connections leave: straight to the vendor, or through an HTTP proxy.

Corporate networks often let traffic out only through a proxy named in `HTTPS_PROXY` /
`HTTP_PROXY` (curl, httpx, requests and the vendors' SDKs all honour them). `Egress` is
that choice, made once (from a vendor's `proxy:` setting or from the environment) and
applied per target host, so `NO_PROXY` can exempt some hosts.

HTTPS targets go through a CONNECT tunnel (`proxy.http1.tunnel`), with TLS end to end
to the vendor; plain-HTTP targets are sent to the proxy with absolute-form request lines.
Only `http://` proxies are spoken (the usual kind; the tunnel's TLS protects the traffic).
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote, urlsplit

__all__ = ["DIRECT", "Egress", "NoProxy", "ProxyURL", "parse_proxy_url"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ProxyURL:
    """An HTTP proxy: where to connect, and the Basic credential from its URL's userinfo.

    `authorization` is the `Proxy-Authorization` value; it is left out of `repr` so that
    a config or an error that shows this object never shows the password."""

    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """`host:port`, for messages and logs (never the credentials)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_proxy_url(text: str) -> ProxyURL:
    """`http://[user:password@]host[:port]` (the scheme may be left out, as curl allows).

    Raises ValueError with a message that names what is wrong and never repeats the
    password."""
    raw = text.strip()
    if "://" not in raw:
        raw = "http://" + raw
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme != "http":
        raise ValueError(
            f"must be an http:// proxy URL (got a {scheme}:// URL); the tunnel to an "
            "https:// vendor is TLS end to end either way"
        )
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError("has an invalid port") from None
    host = parts.hostname
    if not host:
        raise ValueError("has no host (expected http://[user:password@]host:port)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("must be only scheme, credentials, host and port (no path)")
    authorization = None
    if parts.username is not None:
        userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(userinfo.encode()).decode("ascii")
    return ProxyURL(host.lower(), port, authorization)


@dataclass(frozen=True, slots=True)
class _Exempt:
    """One `NO_PROXY` entry: a domain (matching itself and its subdomains), optionally on
    one port, or an IP network (an address is a network of one)."""

    domain: str | None
    network: IPNetwork | None
    port: int | None


@dataclass(frozen=True, slots=True)
class NoProxy:
    """The hosts that bypass the proxy, from `NO_PROXY` (comma-separated, curl and httpx
    semantics): `*` for all; `example.com` or `.example.com` for that domain and every
    subdomain; `host:port` for one port only; an IP address or a CIDR network
    (`10.0.0.0/8`) for targets given as addresses. Case does not matter."""

    everything: bool = False
    entries: tuple[_Exempt, ...] = ()

    @classmethod
    def parse(cls, text: str) -> NoProxy:
        entries: list[_Exempt] = []
        for item in text.split(","):
            name = item.strip().lower()
            if not name:
                continue
            if name == "*":
                return cls(True, ())
            entries.append(_entry(name))
        return cls(False, tuple(entries))

    def exempts(self, host: str, port: int) -> bool:
        if self.everything:
            return True
        host = host.lower().strip("[]")
        try:
            address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(
                host
            )
        except ValueError:
            address = None
        for entry in self.entries:
            if entry.port is not None and entry.port != port:
                continue
            if entry.network is not None:
                if address is not None and address in entry.network:
                    return True
            elif entry.domain is not None and (
                host == entry.domain or host.endswith("." + entry.domain)
            ):
                return True
        return False


def _entry(name: str) -> _Exempt:
    port: int | None = None
    if name.startswith("["):  # [v6]:port
        inner, _, rest = name[1:].partition("]")
        name = inner
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif name.count(":") == 1:  # host:port (more colons: an IPv6 address)
        host, _, maybe_port = name.partition(":")
        if maybe_port.isdigit():
            name, port = host, int(maybe_port)
    try:
        return _Exempt(None, ipaddress.ip_network(name, strict=False), port)
    except ValueError:
        return _Exempt(name.lstrip("."), None, port)


# Lower-case first: where both spellings are set and differ, curl and urllib prefer it.
_ENV_NAMES: Final = {
    "https": ("https_proxy", "HTTPS_PROXY"),
    "http": ("http_proxy", "HTTP_PROXY"),
    "all": ("all_proxy", "ALL_PROXY"),
    "no": ("no_proxy", "NO_PROXY"),
}


def _env(env: Mapping[str, str], kind: str) -> tuple[str, str] | None:
    """(variable name, value) of the first non-empty variable of a kind."""
    for name in _ENV_NAMES[kind]:
        value = env.get(name, "").strip()
        if value:
            return name, value
    return None


@dataclass(frozen=True, slots=True)
class Egress:
    """A pool's way out: a proxy for `https://` targets, one for `http://` targets (each
    None: direct) and the hosts exempt from both. `source` and `exempt_source` say where
    they came from (`config`, or the environment variables' names), for the start-up log."""

    https: ProxyURL | None = None
    http: ProxyURL | None = None
    no_proxy: NoProxy = NoProxy()
    source: str = ""
    exempt_source: str = ""

    @classmethod
    def through(cls, proxy: ProxyURL) -> Egress:
        """Every target through `proxy` (a vendor's own `proxy:` setting)."""
        return cls(proxy, proxy, NoProxy(), "config")

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> Egress:
        """`HTTPS_PROXY`, `HTTP_PROXY` (each falling back to `ALL_PROXY`) and `NO_PROXY`,
        in either case. Raises ValueError naming the variable whose URL is malformed."""
        proxies: dict[str, ProxyURL | None] = {}
        sources: list[str] = []
        fallback = _env(env, "all")
        for scheme in ("https", "http"):
            found = _env(env, scheme) or fallback
            if found is None:
                proxies[scheme] = None
                continue
            name, value = found
            try:
                proxies[scheme] = parse_proxy_url(value)
            except ValueError as exc:
                raise ValueError(f"the environment variable {name} {exc}") from None
            sources.append(name)
        if not sources:
            return DIRECT
        exempt = _env(env, "no")
        return cls(
            proxies["https"],
            proxies["http"],
            NoProxy.parse(exempt[1]) if exempt else NoProxy(),
            " and ".join(dict.fromkeys(sources)),
            exempt[0] if exempt else "",
        )

    def proxy_for(self, host: str, port: int, tls: bool) -> ProxyURL | None:
        """The proxy a connection to host:port goes through, or None for a direct one."""
        proxy = self.https if tls else self.http
        if proxy is None or self.no_proxy.exempts(host, port):
            return None
        return proxy

    def describe_url(self, url: str) -> str:
        """`describe` for the host of a URL."""
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        return self.describe(parts.hostname or "", parts.port or (443 if tls else 80), tls)

    def describe(self, host: str, port: int, tls: bool) -> str:
        """How a connection to host:port leaves, for the start-up log (no credentials)."""
        proxy = self.proxy_for(host, port, tls)
        if proxy is not None:
            how = "a CONNECT tunnel" if tls else "absolute-form requests"
            return f"{how} through the proxy at {proxy.address} (from {self.source})"
        if (self.https if tls else self.http) is not None:
            return f"direct ({self.exempt_source} exempts {host})"
        return "direct"


DIRECT: Final = Egress()
