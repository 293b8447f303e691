"""A native vendor's way out and its TLS trust, checked at load: `proxy` (or the
environment's HTTPS_PROXY / HTTP_PROXY / ALL_PROXY / NO_PROXY) and `ca_file`, plus the
keys only the native HTTP client honours."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from typing import Final

import yaml

from proxy.config.issues import find
from proxy.config.schema import VendorSpec
from proxy.core.vendor_types import VENDOR_TYPES
from proxy.http1 import Egress, parse_proxy_url, tls_context

__all__ = ["env_egress", "native_only_problem", "vendor_egress"]

IssueFn = Callable[[tuple[str | int, ...], str, str], None]

# Vendor keys only the native HTTP client (proxy.http1) honours.
_NATIVE_ONLY: Final = ("proxy", "ca_file", "max_response_bytes", "max_decompressed_bytes")


def env_egress(env: Mapping[str, str], issue: IssueFn) -> Egress | None:
    """The egress the environment asks for, read once per config; None (and an issue) if
    a variable holds a malformed URL."""
    try:
        return Egress.from_environment(env)
    except ValueError as exc:
        issue((), "", f"{exc}")
        return None


def native_only_problem(root: yaml.Node, name: str, vendor: VendorSpec, issue: IssueFn) -> bool:
    """Report (and return True for) a native-only key set on a vendor called via litellm:
    it would be silently ignored."""
    if VENDOR_TYPES[vendor.type].adapter != "litellm":
        return False
    keys = [k for k in _NATIVE_ONLY if find(root, "vendors", name, k) is not None]
    if not keys:
        return False
    issue(
        ("vendors", name, keys[0]),
        f"vendors.{name}.{keys[0]}",
        f"applies to native vendors only (openai, azure, mistral, anthropic); type "
        f"{vendor.type!r} is called through litellm, whose HTTP client reads HTTPS_PROXY "
        "and SSL_CERT_FILE itself",
    )
    return True


def vendor_egress(
    name: str, vendor: VendorSpec, from_env: Egress | None, issue: IssueFn
) -> Egress | None:
    """A vendor's `proxy:` (a URL, or `direct`), else the environment's choice; its
    `ca_file` must load. None (and an issue) when either is unusable."""
    egress = from_env
    if vendor.proxy is not None and vendor.proxy.strip().lower() == "direct":
        egress = Egress(source="config")
    elif vendor.proxy is not None:
        try:
            egress = Egress.through(parse_proxy_url(vendor.proxy))
        except ValueError as exc:
            issue(
                ("vendors", name, "proxy"),
                f"vendors.{name}.proxy",
                f"{exc} (expected http://[user:password@]host:port, or `direct` to bypass "
                "HTTPS_PROXY/HTTP_PROXY for this vendor)",
            )
            return None
    if vendor.ca_file is not None and (problem := _ca_file_problem(vendor.ca_file)):
        issue(("vendors", name, "ca_file"), f"vendors.{name}.ca_file", problem)
        return None
    return egress


def _ca_file_problem(path: str) -> str | None:
    """Why `ca_file` cannot be used, or None (it is loaded as the pool will load it)."""
    try:
        tls_context(path)
    except ssl.SSLError:  # an OSError too: first
        return f"{path!r} holds no PEM CA certificate that TLS can load"
    except OSError as exc:
        return f"cannot read {path!r}: {exc.strerror or exc}"
    return None
