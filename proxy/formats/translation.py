"""What a request translation reports besides the translated body.

Every field of a translated request is either carried (mapped onto the target API), dropped
(a sampling hint the target has no equivalent for: the client is told in
`x-proxy-dropped-params`, and a group with `strict_params` refuses instead), or cannot be
served at all (`Untranslatable`). The vendor bridge turns `Untranslatable` into
`proxy.core.errors.Unsupported` naming the vendor, so the router tries a deployment that
can serve the request and the client gets a 400 only when none can. Nothing is dropped
silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Translated", "Untranslatable"]


@dataclass(frozen=True, slots=True)
class Translated:
    """A request in the target API, and the fields of the original it dropped."""

    body: dict[str, Any]
    dropped: tuple[str, ...] = ()


class Untranslatable(Exception):
    """A request field the target API cannot carry and that changes the answer.

    `field` is the client's field (a dotted path, e.g. `tools[2].type`); `detail` says why,
    phrased to follow "vendor type X ..." (e.g. "has no equivalent of hosted tool
    'file_search'")."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail
