"""The shared backend: replicas meet in Redis (redis-py's asyncio client).

Nothing on the request path waits for Redis to route. A local change is queued and
written in the background by a Lua script that keeps it only if it is the newest for
its field group and then publishes it; peers apply it from their subscription. A
supervisor task owns the connection: it subscribes first, then loads the shared records
and reconciles them with local state (the newest of each side wins and is written or
applied), then marks the backend up. Any error marks it down (the
`llmproxy_state_backend_up` gauge), and the supervisor reconnects with a capped, jittered
backoff and reconciles again: a change made during an outage is published on return.

Counters are added through batches that carry an id Redis remembers for a day, so a
batch whose acknowledgement was lost is retried without being counted twice.

Remembered values are kept in process at once and written by the same background writer
(`SET ... PX`); a replica that has not seen a key asks Redis (one round trip, only then).
Values remembered during an outage are written when Redis returns (at most
`MAX_PENDING_VALUES`, the newest; the process still knows the others).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.state.base import Change, Lease, RateLimit, StateBackend, StateBackendDown
from proxy.state.memory import MemoryBackend

__all__ = ["RedisBackend"]

log = logging.getLogger("llmproxy.state")

# Keep the newest change of a field group, then publish it. KEYS[1]: the deployment's hash.
# ARGV: channel, group, ts, origin, payload, expiry ms, then field/value pairs.
WRITE_LUA = """
local g = ARGV[2]
local cur = redis.call('HMGET', KEYS[1], g .. '.ts', g .. '.origin')
if cur[1] then
  local cts, ts = tonumber(cur[1]), tonumber(ARGV[3])
  if cts > ts or (cts == ts and cur[2] >= ARGV[4]) then return 0 end
end
local args = {g .. '.ts', ARGV[3], g .. '.origin', ARGV[4]}
for i = 7, #ARGV, 2 do
  args[#args + 1] = g .. '.' .. ARGV[i]
  args[#args + 1] = ARGV[i + 1]
end
redis.call('HSET', KEYS[1], unpack(args))
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PUBLISH', ARGV[1], ARGV[5])
return 1
"""

# Sliding-window rate limit (the twin of base.sliding_window), on Redis's clock so replicas
# with skewed clocks agree. KEYS[1]: the limiter's hash. ARGV: limit, window ms, cost,
# partial ('1': count as much of cost as fits). Returns {allowed, remaining, retry ms,
# reset ms, counted}.
HIT_LUA = """
local limit, w, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local idx = math.floor(now / w)
local h = redis.call('HMGET', KEYS[1], 'w', 'cur', 'prev')
local widx, cur, prev = tonumber(h[1]) or idx, tonumber(h[2]) or 0, tonumber(h[3]) or 0
if widx == idx - 1 then prev = cur; cur = 0 elseif widx < idx - 1 then prev = 0; cur = 0 end
local elapsed = now - idx * w
local weight = 1 - elapsed / w
if ARGV[4] == '1' then cost = math.max(1, math.min(cost, math.floor(limit - (prev * weight + cur)))) end
local allowed = 0
if prev * weight + cur + cost <= limit then allowed = 1; cur = cur + cost end
redis.call('HSET', KEYS[1], 'w', idx, 'cur', cur, 'prev', prev)
redis.call('PEXPIRE', KEYS[1], 2 * w)
local retry = 0
if allowed == 0 then
  local room = limit - cur - cost
  if cost > limit then retry = w
  elseif room >= 0 then retry = math.max(0, w * (1 - room / prev) - elapsed)
  else retry = (w - elapsed) + math.max(0, w * (1 - (limit - cost) / cur)) end
end
local reset = 0
if cur > 0 then reset = 2 * w - elapsed elseif prev > 0 then reset = w - elapsed end
local remaining = math.max(0, math.floor(limit - (prev * weight + cur)))
return {allowed, remaining, math.ceil(retry), math.ceil(reset), allowed * cost}
"""

# Apply a batch of counter additions once. KEYS[1]: the batch's id key, then one counter
# hash per addition. ARGV: id ttl s, then field/amount per addition.
ADD_LUA = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
for i = 2, #KEYS do
  redis.call('HINCRBY', KEYS[i], ARGV[2 * i - 2], ARGV[2 * i - 1])
end
return 1
"""

# Take or renew a lease. KEYS[1]: the lease. ARGV: holder, ttl ms.
LEASE_LUA = """
local v = redis.call('GET', KEYS[1])
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
"""

RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

SOCKET_TIMEOUT_S = 1.0  # a partitioned Redis is noticed within about this long
HEARTBEAT_S = 1.0
REPLICA_TTL_S = 15.0  # a replica not seen for this long no longer counts toward shares
BACKOFF_S = (0.1, 5.0)  # reconnect backoff: first, cap
RECORD_TTL_MS = 7 * 24 * 3600 * 1000  # records of deployments no replica writes any more expire
BATCH_TTL_S = 24 * 3600  # how long a counter batch id is remembered
CONNECT_WAIT_S = 2.0  # start-up waits this long for the shared state, then serves locally
MAX_PENDING_VALUES = 10_000  # remembered values waiting for Redis (an outage) at most


class _RedisLease(Lease):
    def __init__(self, backend: RedisBackend, name: str, ttl_s: float) -> None:
        super().__init__(name, ttl_s)
        self._backend = backend
        self._key = f"{backend.prefix}:lease:{name}"

    async def acquire(self) -> bool:
        """True if this replica holds the lease. While Redis is down every replica does
        the leased work itself: duplicated probes are better than none."""
        b = self._backend
        if not b.up:
            return True
        try:
            got = await b._lease(keys=[self._key], args=[b.origin, max(1, int(self.ttl_s * 1000))])
        except (RedisError, OSError) as exc:
            b._broken(exc)
            return True
        return bool(got)

    async def release(self) -> None:
        b = self._backend
        if b.up:
            with contextlib.suppress(RedisError, OSError):
                await b._release(keys=[self._key], args=[b.origin])


class RedisBackend(StateBackend):
    shared = True

    def __init__(self, url: str, prefix: str, origin: str) -> None:
        super().__init__(origin)
        self.up = False
        self.url = url
        self.prefix = prefix
        self.channel = f"{prefix}:events"
        self._client = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),  # fail fast: we fall back locally and reconnect ourselves
        )
        self._write = self._client.register_script(WRITE_LUA)
        self._hit = self._client.register_script(HIT_LUA)
        self._add = self._client.register_script(ADD_LUA)
        self._lease = self._client.register_script(LEASE_LUA)
        self._release = self._client.register_script(RELEASE_LUA)
        self._outbox: dict[tuple[str, str], Change] = {}
        self._pending: dict[tuple[str, str], int] = {}
        self._batch: tuple[str, dict[tuple[str, str], int]] | None = None
        self._batch_seq = 0
        self._local = MemoryBackend(origin)  # rate limits during an outage; remembered values
        self._values: dict[str, tuple[str, int]] = {}  # key -> (value, ttl ms), to be written
        self._wake = asyncio.Event()
        self._reconnect = asyncio.Event()
        self._connected = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._last_error = ""

    # --------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._supervise(), name="state-supervisor"),
            asyncio.create_task(self._writer(), name="state-writer"),
        ]
        try:
            await asyncio.wait_for(self._connected.wait(), CONNECT_WAIT_S)
        except TimeoutError:
            log.warning(
                "state backend %s unreachable at start-up (%s); serving on local state and "
                "retrying in the background",
                _safe_url(self.url),
                self._last_error or "no answer",
                extra={"event": "state_backend", "up": False},
            )

    async def close(self) -> None:
        self._closing = True
        await _stop(self._tasks)
        if self.up:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(self._flush(), SOCKET_TIMEOUT_S * 2)
        unflushed = sum(1 for _ in self._pending) + (len(self._batch[1]) if self._batch else 0)
        if unflushed:
            log.warning(
                "%d counter additions could not be written to the state backend before exit",
                unflushed,
                extra={"event": "state_backend", "unflushed": unflushed},
            )
        with contextlib.suppress(RedisError, OSError):
            await self._client.zrem(f"{self.prefix}:replicas", self.origin)
        await self._client.aclose()

    def _broken(self, exc: BaseException) -> None:
        """An operation failed: go down now, and have the supervisor reconnect and reconcile."""
        self._last_error = f"{type(exc).__name__}: {exc}"
        self._down()
        self._reconnect.set()

    def _down(self) -> None:
        if self.up:
            log.warning(
                "state backend down (%s): serving on local state, reconnecting",
                self._last_error,
                extra={"event": "state_backend", "up": False, "error": self._last_error},
            )
        self._set_up(False)

    async def _supervise(self) -> None:
        delay = BACKOFF_S[0]
        while not self._closing:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                self._reconnect.clear()
                await pubsub.subscribe(self.channel)  # first, so nothing is missed meanwhile
                await self._heartbeat()
                if self._on_connect is not None:
                    await self._on_connect()
                self._set_up(True)
                self._connected.set()
                log.info(
                    "state backend up: %s (%d replicas)",
                    _safe_url(self.url),
                    self.replicas,
                    extra={"event": "state_backend", "up": True, "replicas": self.replicas},
                )
                delay = BACKOFF_S[0]
                self._wake.set()  # flush what waited for the connection
                await self._listen(pubsub)
            except (RedisError, OSError) as exc:
                self._last_error = f"{type(exc).__name__}: {exc}"
                self._down()
            except Exception as exc:  # anything else must not end the reconnecting for good
                log.exception("state backend connection failed unexpectedly; reconnecting")
                self._last_error = f"{type(exc).__name__}: {exc}"
                self._down()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, BACKOFF_S[1])

    async def _listen(self, pubsub: Any) -> None:
        next_beat = time.monotonic() + HEARTBEAT_S
        while not self._reconnect.is_set() and not self._closing:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.25)
            if message is not None and message.get("type") == "message":
                self._received(message["data"])
            if time.monotonic() >= next_beat:
                await self._heartbeat()
                next_beat = time.monotonic() + HEARTBEAT_S

    async def _heartbeat(self) -> None:
        """Announce this replica and count the live ones (a failing call also detects a partition)."""
        key = f"{self.prefix}:replicas"
        now = time.time()
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {self.origin: now})
            pipe.zremrangebyscore(key, "-inf", now - REPLICA_TTL_S)
            pipe.zcard(key)
            pipe.expire(key, int(REPLICA_TTL_S * 4))
            results = await pipe.execute()
        self.replicas = max(1, int(results[2]))

    def _received(self, data: str) -> None:
        try:
            m = orjson.loads(data)
            change = Change(m["d"], m["g"], m["f"], float(m["ts"]), m["o"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("ignored a malformed state event", extra={"event": "state_backend"})
            return
        if change.origin != self.origin and self._on_change is not None:
            self._on_change(change)

    # --------------------------------------------------------------- records

    def publish(self, change: Change) -> None:
        # Coalesced per (deployment, group), so an outage cannot grow it beyond one entry
        # each; written when up (a replay of what reconciliation wrote is a no-op).
        self._outbox[(change.deployment, change.group)] = change
        if self.up:
            self._wake.set()

    async def _writer(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            if not self.up:
                continue
            try:
                await self._flush()
            except (RedisError, OSError) as exc:
                self._broken(exc)

    async def _flush(self) -> None:
        outbox, self._outbox = self._outbox, {}
        if outbox:
            await self.write(outbox.values())
        if self._values:
            await self._write_values()
        if self._batch is None and self._pending:
            self._batch_seq += 1
            self._batch = (f"{self.origin}:{self._batch_seq}", self._pending)
            self._pending = {}
        if self._batch is not None:
            batch_id, adds = self._batch
            keys = [f"{self.prefix}:batch:{batch_id}"]
            args: list[Any] = [BATCH_TTL_S]
            for (key, field), amount in adds.items():
                keys.append(f"{self.prefix}:c:{key}")
                args += [field, amount]
            await self._add(keys=keys, args=args)
            self._batch = None  # acknowledged (applied now, or already applied before)

    async def write(self, changes: Iterable[Change]) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            count = 0
            for c in changes:
                payload = orjson.dumps(
                    {
                        "v": 1,
                        "d": c.deployment,
                        "g": c.group,
                        "ts": c.ts,
                        "o": c.origin,
                        "f": c.fields,
                    }
                )
                args: list[Any] = [
                    self.channel,
                    c.group,
                    repr(c.ts),
                    c.origin,
                    payload,
                    RECORD_TTL_MS,
                ]
                for name, value in c.fields.items():
                    args += [name, value]
                await self._write(keys=[self._record_key(c.deployment)], args=args, client=pipe)
                count += 1
            if count:
                await pipe.execute()

    async def snapshot(self, deployments: Iterable[str]) -> dict[str, dict[str, Change]]:
        ids = list(deployments)
        if not ids:
            return {}
        async with self._client.pipeline(transaction=False) as pipe:
            for dep_id in ids:
                pipe.hgetall(self._record_key(dep_id))
            hashes = await pipe.execute()
        out: dict[str, dict[str, Change]] = {}
        for dep_id, fields in zip(ids, hashes, strict=True):
            groups: dict[str, dict[str, str]] = {}
            for name, value in fields.items():
                group, _, field = name.partition(".")
                groups.setdefault(group, {})[field] = value
            for group, values in groups.items():
                ts, origin = values.pop("ts", None), values.pop("origin", None)
                if ts is None or origin is None:
                    continue
                out.setdefault(dep_id, {})[group] = Change(dep_id, group, values, float(ts), origin)
        return out

    def _record_key(self, deployment: str) -> str:
        return f"{self.prefix}:dep:{deployment}"

    # --------------------------------------------------------------- counters, limits, leases

    async def hit(
        self, key: str, limit: int, window_s: float, cost: int = 1, partial: bool = False
    ) -> RateLimit:
        """One Redis round trip; during an outage, this replica's share of `limit` locally."""
        window_ms = max(1, int(window_s * 1000))
        if self.up:
            try:
                allowed, remaining, retry_ms, reset_ms, counted = await self._hit(
                    keys=[f"{self.prefix}:rl:{key}"],
                    args=[limit, window_ms, cost, "1" if partial else "0"],
                )
            except (RedisError, OSError) as exc:
                self._broken(exc)
            else:
                return RateLimit(
                    bool(allowed),
                    limit,
                    int(remaining),
                    retry_ms / 1000.0,
                    reset_ms / 1000.0,
                    int(counted),
                )
        local = self._local.hit_now(key, self.share(limit), window_s, cost, partial)
        return RateLimit(
            local.allowed, limit, local.remaining, local.retry_after_s, local.reset_s, local.granted
        )

    def add(self, key: str, field: str, amount: int) -> None:
        k = (key, field)
        self._pending[k] = self._pending.get(k, 0) + amount
        if self.up:
            self._wake.set()

    async def counters(self, key: str) -> dict[str, int]:
        if not self.up:
            raise StateBackendDown(self._last_error or "not connected")
        try:
            values = {
                f: int(v) for f, v in (await self._client.hgetall(f"{self.prefix}:c:{key}")).items()
            }
        except (RedisError, OSError) as exc:
            self._broken(exc)
            raise StateBackendDown(self._last_error) from exc
        unflushed = [self._pending, self._batch[1] if self._batch else {}]
        for adds in unflushed:
            for (k, field), amount in adds.items():
                if k == key:
                    values[field] = values.get(field, 0) + amount
        return values

    def lease(self, name: str, ttl_s: float) -> Lease:
        return _RedisLease(self, name, ttl_s)

    # --------------------------------------------------------------- remembered values

    def remember(self, key: str, value: str, ttl_s: float) -> None:
        self._local.memo.put(key, value, ttl_s)
        values = self._values
        values[key] = (value, max(1, int(ttl_s * 1000)))
        if len(values) > MAX_PENDING_VALUES:
            del values[next(iter(values))]
        if self.up:
            self._wake.set()

    async def _write_values(self) -> None:
        values, self._values = self._values, {}
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, (value, ttl_ms) in values.items():
                    pipe.set(self._value_key(key), value, px=ttl_ms)
                await pipe.execute()
        except BaseException:
            self._values = {**values, **self._values}  # written on the next flush
            raise

    async def recall(self, key: str) -> str | None:
        local = self._local.memo.get(key)
        if local is not None or not self.up:
            return local
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.get(self._value_key(key))
                pipe.pttl(self._value_key(key))
                value, ttl_ms = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._broken(exc)
            return None
        if not isinstance(value, str):
            return None
        if isinstance(ttl_ms, int) and ttl_ms > 0:
            self._local.memo.put(key, value, ttl_ms / 1000.0)
        return value

    def _value_key(self, key: str) -> str:
        return f"{self.prefix}:kv:{key}"


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{rest}"


async def _stop(tasks: list[asyncio.Task[None]], every_s: float = 0.5) -> None:
    """Cancel `tasks` and wait until they have ended.

    One cancel is not always enough: a cancel that lands while a library handles its own
    read timeout can come out as "no data" (the task's loop then goes on), and shutdown
    must not hang on it. So the tasks are cancelled again every `every_s` until they end
    (their loops also stop on `_closing`); a task's own error still surfaces here.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every_s)
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
