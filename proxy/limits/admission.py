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

from proxy.config import ClientConfig, Config, Price
from proxy.core.errors import ApiError
from proxy.core.usage import Usage, estimate_tokens
from proxy.limits.buckets import Bucket, DayCounter
from proxy.limits.checks import (
    LIMITS,
    LOOP_SWEEP_AT,
    Asked,
    LimitCheck,
    checks_for,
    go_duration,
)
from proxy.limits.ledger import UsageLedger, utc_day
from proxy.limits.shared import SharedWindow
from proxy.metrics import Metrics
from proxy.state.base import StateBackend

__all__ = ["OPEN", "ClientState", "Limits", "Ticket"]

log = logging.getLogger("llmproxy")

UNKNOWN_CLIENT = "_unknown_"  # the `client` label of requests whose key is not known


class ClientState:
    """One client key's live counters."""

    __slots__ = (
        "bucket_headers",
        "budget",
        "checks",
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
        self.loop_sweep_at = LOOP_SWEEP_AT
        self.checks: tuple[LimitCheck, ...] = ()  # set by Limits, once shared windows exist
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
            st.checks = checks_for(st)
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
        prompt, completion = estimate_tokens(endpoint, body, raw_len)
        tokens = float(prompt + completion)
        p_price, c_price = self._prices.get(group, (0.0, 0.0))
        asked = Asked(
            body,
            now,
            tokens,
            min(tokens, state.tpm.capacity) if state.tpm is not None else tokens,
            (prompt * p_price + completion * c_price) / 1_000_000,
            self._until_midnight(),
        )
        checks = state.checks
        for check in checks:
            refused = check.refusal(state, asked)
            if refused is not None:
                raise self._refuse(
                    state, check.reason, refused.detail, refused.wait_s, retry=refused.retry
                )
        # Every check passed: take the reservations (no await since the checks: exact).
        for check in checks:
            check.take(state, asked)
        state.in_flight += 1
        return Ticket(self, state, group, asked.reserve_tokens, asked.cost, self.headers(state))

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


def _plain(value: float) -> float | int:
    """A figure for JSON: whole numbers as integers, money to the micro-dollar."""
    return int(value) if float(value).is_integer() else round(value, 6)


def _number(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")
