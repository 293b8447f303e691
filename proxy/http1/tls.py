"""The TLS trust a vendor's pool uses: the system's CA store, plus a vendor's own bundle."""

from __future__ import annotations

import ssl

__all__ = ["tls_context"]


def tls_context(ca_file: str | None) -> ssl.SSLContext | None:
    """A verifying client context that trusts the system's CAs and, with `ca_file`, the PEM
    certificates in it as well (a private CA, or a TLS-inspecting corporate proxy's).
    None without `ca_file`: the pool then makes the default context when it first needs one.

    Raises OSError if the file cannot be read, ssl.SSLError if it holds no certificate."""
    if ca_file is None:
        return None
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=ca_file)
    return context
