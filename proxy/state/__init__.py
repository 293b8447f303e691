"""State shared between replicas: `memory` (one process, the default) or `redis`."""

from __future__ import annotations

from proxy.config import StateConfig
from proxy.state.base import (
    BucketClaim,
    Change,
    HeadroomGrant,
    HeadroomReport,
    Lease,
    RateLimit,
    StateBackend,
    StateBackendDown,
    replica_id,
)
from proxy.state.memory import MemoryBackend

__all__ = [
    "BucketClaim",
    "Change",
    "HeadroomGrant",
    "HeadroomReport",
    "Lease",
    "MemoryBackend",
    "RateLimit",
    "StateBackend",
    "StateBackendDown",
    "make_backend",
    "replica_id",
]


def make_backend(config: StateConfig, origin: str | None = None) -> StateBackend:
    """The backend `config` names; redis-py is imported only when Redis is used."""
    origin = origin or replica_id()
    if config.backend == "redis":
        from proxy.state.redis import RedisBackend

        assert config.url is not None  # the config loader requires it
        return RedisBackend(config.url, config.key_prefix, origin)
    return MemoryBackend(origin)
