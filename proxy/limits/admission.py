"""Admission of client requests: who is calling, may they use this group, are they within limits.

The inbound APIs (OpenAI's and Anthropic's) call `authenticate` before reading the body and
`admit` before routing; both raise `ApiError`s that each API renders in its own shape. An
admitted request holds a `Ticket`: its reservation against the client's limits, replaced by
the vendor's real usage when it settles (exactly once), which also writes the usage ledger.

Everything here runs on the event loop without awaiting, so the check-then-reserve of one
request cannot interleave with another's: limits hold exactly under any concurrency.

The key lookup is a dict keyed by the SHA-256 of the presented key, built at config load.
Comparing digests rather than keys leaves nothing for a timing attack to learn.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import orjson

from proxy.config import ClientConfig, Config, Price
from proxy.core.errors import ApiError
from proxy.core.usage import Usage, estimate_tokens
from proxy.limits.buckets import Bucket, DayCounter
from proxy.limits.ledger import UsageLedger, utc_day
from proxy.limits.shared import SharedWindow
from proxy.metrics import Metrics
from proxy.state.base import StateBackend

__all__ = ["OPEN", "ClientState", "Limits", "Ticket"]

log = logging.getLogger("llmproxy")

UNKNOWN_CLIENT = "_unknown_"  # the `client` label of requests whose key is not known

# Fields that do not change what a request asks the model (loop detection ignores them).
_LOOP_IGNORED = frozenset({"stream", "stream_options", "user", "metadata"})
# A client's loop history is swept of expired bodies when it grows past this.
_LOOP_SWEEP_AT = 4096


# The refusal reasons (the `reason` label of llmproxy_client_limit_rejections_total and the
# error `code`), in the order admission checks them, with their names in messages.
LIMITS: Mapping[str, str] = {
    "loop_detected": "identical requests (loop_max_repeats per loop_window_s)",
    "max_concurrent": "concurrent requests (max_concurrent)",
    "rpm": "requests per minute (rpm)",
    "tpm": "tokens per minute (tpm)",
    "tokens_per_day": "tokens per UTC day (tokens_per_day)",
    "budget_usd_per_day": "USD per UTC day (budget_usd_per_day)",
}


class ClientState:
    """One client key's live counters."""

    __slots__ = (
        "bucket_headers",
        "budget",
        "config",
        "day",
        "day_headers",
        "in_flight",
        "loop_sweep_at",
        "loops",
        "name",
        "others_applied",
        "rpm",
        "shared_rpm",
        "shared_tpm",
        "tokens_day",
        "tpm",
    )

    def __init__(self, config: ClientConfig, now: float) -> None:
        lim = config.limits
        self.config = config
        self.name = config.name
        self.in_flight = 0
        self.rpm = Bucket(lim.rpm, now, overdraft=False) if lim.rpm else None
        # With a shared backend: the cluster-wide rpm and tpm, in grants (Limits sets them).
        self.shared_rpm: SharedWindow | None = None
        self.shared_tpm: SharedWindow | None = None
        self.tpm = Bucket(lim.tpm, now, overdraft=True) if lim.tpm else None
        self.tokens_day = DayCounter(lim.tokens_per_day) if lim.tokens_per_day else None
        self.budget = DayCounter(lim.budget_usd_per_day) if lim.budget_usd_per_day else None
        self.loops: dict[bytes, deque[float]] | None = {} if lim.loop_max_repeats else None
        self.loop_sweep_at = _LOOP_SWEEP_AT
        # (limit, header names and limit value), built once: headers go on every response.
        self.bucket_headers = tuple(
            (b, _header_names(name, lim_value))
            for b, name, lim_value in (
                (self.rpm, "requests", lim.rpm),
                (self.tpm, "tokens", lim.tpm),
            )
            if b is not None and lim_value is not None
        )
        self.day_headers = tuple(
            (c, _header_names(name, c.limit))
            for c, name in ((self.tokens_day, "tokens-day"), (self.budget, "usd-day"))
            if c is not None
        )
        self.day = ""
        # Other replicas' usage today (tokens, cost) already in the daily counters' `used`.
        self.others_applied: tuple[float, float] = (0, 0.0)


class Ticket:
    """An admitted request's hold on its client's limits, settled exactly once."""

    __slots__ = ("_done", "_limits", "cost", "group", "headers", "state", "tokens")

    def __init__(
        self,
        limits: Limits | None,
        state: ClientState | None,
        group: str,
        tokens: float,
        cost: float,
        headers: dict[str, str],
    ) -> None:
        self._limits = limits
        self.state = state
        self.group = group
        self.tokens = tokens
        self.cost = cost
        self.headers = headers
        self._done = False

    @property
    def client(self) -> str | None:
        return self.state.name if self.state is not None else None

    def settle(
        self, usage: Usage | None, price: Price | None, *, served: bool
    ) -> asyncio.Future[None] | None:
        """Replace the reservation by the real usage and account it (once; later calls do nothing).

        Returns the ledger batch to await before completing the response (None: nothing to wait for).
        """
        if self._done or self._limits is None:
            return None
        self._done = True
        return self._limits._settle(self, usage, price, served)


OPEN = Ticket(
    None, None, "", 0.0, 0.0, {}
)  # the ticket of every request when no clients are configured


class Limits:
    """Client keys and their limits, built from a config; the ledger persists their usage."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        ledger: UsageLedger,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        state: StateBackend | None = None,
    ) -> None:
        self.metrics = metrics
        self.ledger = ledger
        self.clock = clock
        self.wall = wall
        self.open = config.clients is None
        now = clock()
        self.clients: dict[str, ClientState] = {}
        self._by_digest: dict[str, ClientState] = {}
        for c in config.clients or ():
            st = ClientState(c, now)
            if state is not None and state.shared:
                if c.limits.rpm:
                    st.shared_rpm = SharedWindow(state, f"rpm:{c.name}", c.limits.rpm)
                if c.limits.tpm:
                    st.shared_tpm = SharedWindow(state, f"tpm:{c.name}", c.limits.tpm)
            self.clients[c.name] = st
            self._by_digest[c.key_sha256] = st
        # Worst-case price per group (its deployments and fallbacks), for budget reservations.
        self._prices: dict[str, tuple[float, float]] = {}
        for name, g in config.models.items():
            prices = [config.deployments[m.deployment].price for m in g.members]
            fb = g.context_window_fallback
            if fb is not None and fb in config.models:
                prices += [
                    config.deployments[m.deployment].price for m in config.models[fb].members
                ]
            known = [p for p in prices if p is not None]
            self._prices[name] = (
                max((p.prompt for p in known), default=0.0),
                max((p.completion for p in known), default=0.0),
            )
        self._day_cache: tuple[int, str] = (-1, "")

    # ------------------------------------------------------------------ start-up

    def adopt(self, state: ClientState) -> None:
        """Keep a client's live counters across a config reload that did not change it."""
        self.clients[state.name] = state
        self._by_digest[state.config.key_sha256] = state

    def load(self) -> None:
        """Take today's usage from the ledger (after it is opened): daily limits survive restarts."""
        today = self._today()
        for st in self.clients.values():
            self._roll(st, today)

    def log_mode(self) -> None:
        if self.open:
            log.warning(
                "NO CLIENT KEYS: the config has no `clients:` section, so the proxy is OPEN: "
                "anyone who can reach it may use every model group, without limits",
                extra={"event": "open_proxy"},
            )
        else:
            log.info(
                "%d client key(s) configured; requests need 'Authorization: Bearer <key>' or "
                "'x-api-key: <key>'",
                len(self.clients),
                extra={"event": "clients", "clients": sorted(self.clients)},
            )

    # ------------------------------------------------------------------ the hot path

    def authenticate(self, headers: Mapping[str, str]) -> ClientState | None:
        """The calling client (None when the proxy is open). Raises ApiError(401)."""
        if self.open:
            return None
        auth = headers.get("Authorization")
        key: str | None = None
        if auth is not None:
            scheme, _, token = auth.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                key = token.strip()
        if key is None:
            api_key = headers.get("x-api-key")
            if api_key is not None and api_key.strip():
                key = api_key.strip()
        if key is None:
            self.metrics.limit_rejection(UNKNOWN_CLIENT, "missing_key")
            if auth is not None:
                raise _unauthorized(
                    "The Authorization header is malformed: send 'Authorization: Bearer <your proxy key>'.",
                    "invalid_authorization_header",
                )
            raise _unauthorized(
                "Missing API key: send 'Authorization: Bearer <your proxy key>' (OpenAI SDKs) "
                "or 'x-api-key: <your proxy key>' (Anthropic SDKs).",
                "missing_api_key",
            )
        state = self._by_digest.get(hashlib.sha256(key.encode()).hexdigest())
        if state is None:
            self.metrics.limit_rejection(UNKNOWN_CLIENT, "invalid_key")
            raise _unauthorized(
                "Invalid API key: it is not one of this proxy's client keys. Ask the proxy's "
                "operators for a key.",
                "invalid_api_key",
            )
        return state

    async def ready(
        self, state: ClientState | None, endpoint: str, body: Mapping[str, Any], raw_len: int
    ) -> None:
        """Before `admit`: with a shared backend, make sure cluster-wide grants are at hand
        (awaits a round trip only when this replica has too few left; see limits/shared.py)."""
        if state is None:
            return
        if state.shared_rpm is not None:
            await state.shared_rpm.ready()
        if state.shared_tpm is not None:
            tokens = sum(estimate_tokens(endpoint, body, raw_len))
            await state.shared_tpm.ready(min(tokens, state.shared_tpm.limit))

    def admit(
        self,
        state: ClientState | None,
        group: str,
        endpoint: str,
        body: Mapping[str, Any],
        raw_len: int,
    ) -> Ticket:
        """Check `state`'s client may send this request now and reserve for it. Raises ApiError (403/429)."""
        if state is None:
            return OPEN
        cfg = state.config
        if cfg.models is not None and group not in cfg.models:
            self.metrics.limit_rejection(state.name, "model_not_allowed")
            raise ApiError(
                403,
                f"The client key '{state.name}' may not use the model group '{group}'. "
                f"It may use: {', '.join(sorted(cfg.models))}.",
                type="permission_error",
                code="model_not_allowed",
                param="model",
                headers=self.headers(state),
            )
        now = self.clock()
        self._roll(state, self._today())
        lim = cfg.limits
        prompt, completion = estimate_tokens(endpoint, body, raw_len)
        tokens = float(prompt + completion)
        p_price, c_price = self._prices.get(group, (0.0, 0.0))
        cost = (prompt * p_price + completion * c_price) / 1_000_000
        loop_key: bytes | None = None
        loops = state.loops
        if loops is not None:
            loop_key = _loop_digest(body)
            seen = loops.get(loop_key)
            if seen is not None:
                horizon = now - lim.loop_window_s
                while seen and seen[0] <= horizon:
                    seen.popleft()
                assert lim.loop_max_repeats is not None
                if len(seen) >= lim.loop_max_repeats:
                    wait = seen[0] + lim.loop_window_s - now
                    raise self._refuse(
                        state,
                        "loop_detected",
                        f"This exact request was sent {len(seen)} times in the last "
                        f"{lim.loop_window_s:g}s (loop_max_repeats {lim.loop_max_repeats}): "
                        "it looks like an agent stuck in a loop. Change the request, or wait "
                        f"{_human(wait)} until the oldest repeat leaves the window.",
                        wait,
                        retry=False,
                    )
        if lim.max_concurrent is not None and state.in_flight >= lim.max_concurrent:
            raise self._refuse(
                state,
                "max_concurrent",
                f"limit {lim.max_concurrent} requests in flight at once, all taken; retry "
                "when one of them has finished.",
                1.0,
            )
        rpm, tpm = state.rpm, state.tpm
        if rpm is not None:
            rpm.refill(now)
            if not rpm.fits(1):
                wait = rpm.wait_s(1)
                raise self._refuse(
                    state,
                    "rpm",
                    f"limit {lim.rpm}, remaining {rpm.remaining()}; retry after {_human(wait)} "
                    f"(back to full in {_human(rpm.reset_s())}).",
                    wait,
                )
        shared = state.shared_rpm
        if shared is not None and not shared.fits(now):
            wait = shared.retry_after_s or 1.0
            raise self._refuse(
                state,
                "rpm",
                f"limit {lim.rpm} across all replicas, all taken; retry after {_human(wait)}.",
                wait,
            )
        reserve_tokens = tokens
        if tpm is not None:
            tpm.refill(now)
            reserve_tokens = min(tokens, tpm.capacity)
            if not tpm.fits(reserve_tokens):
                wait = tpm.wait_s(reserve_tokens)
                raise self._refuse(
                    state,
                    "tpm",
                    f"limit {lim.tpm}, remaining {tpm.remaining()}, this request reserves "
                    f"about {int(reserve_tokens)} (prompt estimate + max_tokens); retry after "
                    f"{_human(wait)} (back to full in {_human(tpm.reset_s())}).",
                    wait,
                )
        shared_tpm = state.shared_tpm
        if shared_tpm is not None and not shared_tpm.fits(now, reserve_tokens):
            wait = shared_tpm.retry_after_s or 1.0
            raise self._refuse(
                state,
                "tpm",
                f"limit {lim.tpm} across all replicas, this request reserves about "
                f"{int(reserve_tokens)} (prompt estimate + max_tokens) and fewer are left; "
                f"retry after {_human(wait)}.",
                wait,
            )
        for counter, reason, amount in (
            (state.tokens_day, "tokens_per_day", tokens),
            (state.budget, "budget_usd_per_day", cost),
        ):
            if counter is not None and not counter.fits(amount):
                wait = self._until_midnight()
                used = counter.used + counter.held
                raise self._refuse(
                    state,
                    reason,
                    f"limit {_amount(reason, counter.limit)}, used or in flight today "
                    f"{_amount(reason, used)}, this request reserves about "
                    f"{_amount(reason, amount)}; it resets at 00:00 UTC, in {_human(wait)}.",
                    wait,
                )
        # Every check passed: take the reservation (no await since the checks, so it is exact).
        if rpm is not None:
            rpm.reserve(1)
            rpm.settle(1, 1)
        if shared is not None:
            shared.take()
        if shared_tpm is not None:
            shared_tpm.take(reserve_tokens)
        if tpm is not None:
            tpm.reserve(reserve_tokens)
        if state.tokens_day is not None:
            state.tokens_day.reserve(tokens)
        if state.budget is not None:
            state.budget.reserve(cost)
        if loops is not None and loop_key is not None:
            if len(loops) >= state.loop_sweep_at:
                _sweep(loops, now - lim.loop_window_s)
                # Amortised: the next sweep waits until the history has doubled again.
                state.loop_sweep_at = max(_LOOP_SWEEP_AT, 2 * len(loops))
            loops.setdefault(loop_key, deque()).append(now)
        state.in_flight += 1
        return Ticket(self, state, group, reserve_tokens, cost, self.headers(state))

    def _settle(
        self, ticket: Ticket, usage: Usage | None, price: Price | None, served: bool
    ) -> asyncio.Future[None] | None:
        state = ticket.state
        assert state is not None
        state.in_flight -= 1
        if usage is not None:
            actual = float(usage.prompt + usage.completion)
            cost = (
                price.cost_usd(usage.prompt, usage.completion, usage.cached_prompt)
                if price
                else 0.0
            )
        elif served:
            # Answered but no usage reported (a stream cut off before its end): the
            # limits keep the estimate; the ledger records only what vendors reported.
            actual, cost = ticket.tokens, ticket.cost
        else:
            actual, cost = 0.0, 0.0
        if state.tpm is not None:
            state.tpm.refill(self.clock())
            state.tpm.settle(ticket.tokens, actual)
        if state.shared_tpm is not None:
            state.shared_tpm.settle(ticket.tokens, actual)
        today = self._today()
        self._roll(state, today)
        if state.tokens_day is not None:
            state.tokens_day.settle(ticket.tokens, actual)
        if state.budget is not None:
            state.budget.settle(ticket.cost, cost)
        return self.ledger.record(
            today,
            state.name,
            ticket.group,
            ok=served,
            prompt=usage.prompt if usage else 0,
            completion=usage.completion if usage else 0,
            cached=usage.cached_prompt if usage else 0,
            cost_usd=cost if usage else 0.0,
        )

    # ------------------------------------------------------------------ headers and refusals

    def headers(self, state: ClientState) -> dict[str, str]:
        """OpenAI-style `x-ratelimit-*` headers for the client's current state."""
        h: dict[str, str] = {}
        now = self.clock()
        for bucket, (limit, remaining, reset, value) in state.bucket_headers:
            bucket.refill(now)
            h[limit] = value
            h[remaining] = str(bucket.remaining())
            h[reset] = go_duration(bucket.reset_s())
        if state.day_headers:
            day_reset = go_duration(self._until_midnight())
            for counter, (limit, remaining, reset, value) in state.day_headers:
                left = counter.remaining()
                h[limit] = value
                h[remaining] = _number(left) if counter is state.budget else str(int(left))
                h[reset] = day_reset
        return h

    def _refuse(
        self, state: ClientState, reason: str, detail: str, wait_s: float, *, retry: bool = True
    ) -> ApiError:
        self.metrics.limit_rejection(state.name, reason)
        wait_s = max(wait_s, 0.001)
        headers = self.headers(state)
        headers["retry-after"] = str(max(1, math.ceil(wait_s)))
        headers["retry-after-ms"] = str(math.ceil(wait_s * 1000))
        if not retry or wait_s > 60:
            headers["x-should-retry"] = "false"  # an SDK's automatic retry cannot help
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.wall() + wait_s))
        message = (
            f"Client '{state.name}' is over its limit on {LIMITS[reason]}: {detail}"
            if reason != "loop_detected"
            else f"Loop detected for client '{state.name}': {detail}"
        )
        return ApiError(
            429,
            f"{message} Resets at {at}.",
            type="rate_limit_error",
            code=reason,
            headers=headers,
        )

    # ------------------------------------------------------------------ days and admin

    def _today(self) -> str:
        wall = self.wall()
        n = int(wall // 86400)
        cached = self._day_cache
        if cached[0] != n:
            cached = self._day_cache = (n, utc_day(wall))
        return cached[1]

    def _until_midnight(self) -> float:
        wall = self.wall()
        return (math.floor(wall / 86400) + 1) * 86400 - wall

    def _roll(self, state: ClientState, today: str) -> None:
        """On a new UTC day (or at start-up), daily counters start from the ledger's figures."""
        if state.day == today:
            return
        state.day = today
        state.others_applied = self.ledger.others_today(today, state.name)
        tokens, cost = self.ledger.counted_today(today, state.name)
        if state.tokens_day is not None:
            state.tokens_day.used = float(tokens)
        if state.budget is not None:
            state.budget.used = cost

    def apply_shared(self) -> None:
        """Fold the other replicas' usage today (the ledger's last `refresh`) into the daily
        counters: with replicas, daily limits count the whole cluster's usage."""
        today = self._today()
        for state in self.clients.values():
            if state.day != today:
                continue  # rolled on its next request, from the ledger (others included)
            tokens, cost = self.ledger.others_today(today, state.name)
            old_tokens, old_cost = state.others_applied
            if state.tokens_day is not None:
                state.tokens_day.used += tokens - old_tokens
            if state.budget is not None:
                state.budget.used += cost - old_cost
            state.others_applied = (tokens, cost)

    def reset(self, name: str) -> ClientState:
        """The emergency quota reset: full buckets, daily counters from zero, loop history forgotten.

        The ledger keeps every row (it is the accounting record); daily limits count from now on.
        """
        state = self.clients[name]
        today = self._today()
        self._roll(state, today)
        self.ledger.mark_reset(today, name)
        for bucket in (state.rpm, state.tpm):
            if bucket is not None:
                bucket.fill()
                bucket.level -= bucket.held  # requests in flight still hold their share
        for counter in (state.tokens_day, state.budget):
            if counter is not None:
                counter.used = 0.0
        if state.loops is not None:
            state.loops.clear()
        return state

    def budget_use(self) -> Iterator[tuple[str, str, float]]:
        """(client, limit, used / limit) for every daily limit, for the budget gauge.

        Read-only: a scrape must not roll a client's day (it may come before the ledger is open).
        """
        today = self._today()
        for state in self.clients.values():
            counted = None if state.day == today else self.ledger.counted_today(today, state.name)
            for i, (counter, name) in enumerate(
                ((state.tokens_day, "tokens_per_day"), (state.budget, "budget_usd_per_day"))
            ):
                if counter is not None:
                    used = counter.used if counted is None else counted[i]
                    yield state.name, name, used / counter.limit

    def status(self, state: ClientState) -> dict[str, Any]:
        """A client's limits right now, for /admin/status and /admin/usage."""
        lim = state.config.limits
        now = self.clock()
        self._roll(state, self._today())
        out: dict[str, Any] = {
            "in_flight": state.in_flight,
            "models": sorted(state.config.models) if state.config.models is not None else None,
        }
        limits: dict[str, Any] = {}
        if lim.max_concurrent is not None:
            limits["max_concurrent"] = {"limit": lim.max_concurrent, "in_flight": state.in_flight}
        for bucket, name in ((state.rpm, "rpm"), (state.tpm, "tpm")):
            if bucket is not None:
                bucket.refill(now)
                limits[name] = {
                    "limit": int(bucket.capacity),
                    "remaining": bucket.remaining(),
                    "reset_s": round(bucket.reset_s(), 3),
                }
        for counter, name in (
            (state.tokens_day, "tokens_per_day"),
            (state.budget, "budget_usd_per_day"),
        ):
            if counter is not None:
                limits[name] = {
                    "limit": _plain(counter.limit),
                    "used": _plain(counter.used),
                    "in_flight": _plain(counter.held),
                    "remaining": _plain(counter.remaining()),
                    "reset_s": round(self._until_midnight(), 3),
                }
        if lim.loop_max_repeats is not None:
            limits["loop_detection"] = {
                "loop_max_repeats": lim.loop_max_repeats,
                "loop_window_s": lim.loop_window_s,
            }
        for name, entry in limits.items():
            entry["summary"] = _summary(name, entry)
        out["limits"] = limits
        return out


def _summary(name: str, entry: Mapping[str, Any]) -> str:
    """One limit in a few words, as `llm-proxy status` and /dashboard print it (both render
    this string, so they cannot disagree)."""
    if name == "loop_detection":
        return f"{entry['loop_max_repeats']} repeats per {entry['loop_window_s']:g}s"
    if "remaining" in entry:
        return f"{entry['remaining']:g}/{entry['limit']:g} left"
    return f"{entry['in_flight']}/{entry['limit']} in flight"


def _header_names(name: str, limit: float) -> tuple[str, str, str, str]:
    return (
        f"x-ratelimit-limit-{name}",
        f"x-ratelimit-remaining-{name}",
        f"x-ratelimit-reset-{name}",
        _number(limit),
    )


def _unauthorized(message: str, code: str) -> ApiError:
    return ApiError(401, message, type="invalid_request_error", code=code)


def _loop_digest(body: Mapping[str, Any]) -> bytes:
    """The request's identity for loop detection: its fields in canonical order, minus the
    ones that do not change what is asked."""
    canonical = orjson.dumps(
        {k: v for k, v in body.items() if k not in _LOOP_IGNORED}, option=orjson.OPT_SORT_KEYS
    )
    return hashlib.blake2b(canonical, digest_size=16).digest()


def _sweep(loops: dict[bytes, deque[float]], horizon: float) -> None:
    for key in [k for k, seen in loops.items() if not seen or seen[-1] <= horizon]:
        del loops[key]


def go_duration(seconds: float) -> str:
    """A duration as OpenAI writes it in `x-ratelimit-reset-*`: `20ms`, `1s`, `6m0s`, `1h2m3s`."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds * 1000) / 1000
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    s = f"{secs:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{int(hours)}h{int(minutes)}m{s}s"
    if minutes:
        return f"{int(minutes)}m{s}s"
    return f"{s}s"


def _human(seconds: float) -> str:
    return go_duration(max(seconds, 0.0))


def _plain(value: float) -> float | int:
    """A figure for JSON: whole numbers as integers, money to the micro-dollar."""
    return int(value) if float(value).is_integer() else round(value, 6)


def _number(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _amount(reason: str, value: float) -> str:
    return f"${value:.4f}" if reason == "budget_usd_per_day" else str(math.ceil(value))
