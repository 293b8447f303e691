"""The open-file limit a proxy needs, raised at start-up as far as the OS allows.

Every open stream holds two descriptors (the client's socket and the vendor's), so the
common default soft limit of 1,024 caps a process at about 500 streams. The hard limit is
what an unprivileged process may raise its soft limit to; `raise_open_files_limit` does
that once, before the vendor pools are sized from it (`proxy.http1.default_limit`).
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["FDS_PER_STREAM", "OpenFiles", "raise_open_files_limit"]

FDS_PER_STREAM = 2  # the client's socket and the vendor's


class OpenFiles(NamedTuple):
    """The soft limit before and after, the hard limit, and why it could not be raised."""

    before: int
    after: int
    hard: int
    error: str | None = None

    @property
    def streams(self) -> int:
        """About how many streams fit in the soft limit now."""
        return self.after // FDS_PER_STREAM


def raise_open_files_limit() -> OpenFiles | None:
    """Raise the soft RLIMIT_NOFILE to the hard limit; None where there is no such limit."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Unix
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        # Linux refuses an infinite NOFILE; nr_open is the real ceiling.
        hard = _nr_open(default=1 << 20)
    if soft != resource.RLIM_INFINITY and soft >= hard:
        return OpenFiles(soft, soft, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:
        return OpenFiles(soft, soft, hard, str(exc) or type(exc).__name__)
    return OpenFiles(soft, hard, hard)


def _nr_open(default: int) -> int:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return default
