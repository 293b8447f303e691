"""The shared vocabulary at the bottom of the package: what every layer talks in.

Outcomes and their policies (`outcomes`), client-facing errors (`errors`), token usage
(`usage`), the vendor types (`vendor_types`) and secret redaction (`redact`). Nothing here
imports anything else of `proxy`: every other layer may import from it, so it never
reaches up.
"""
