"""Outcome classes and the one table of what each class means.

Every upstream attempt ends in exactly one `OutcomeClass`. The class, not the call site,
decides failover, cooldown, the breaker's verdict, blame and (when every candidate failed)
what the client is told: that is `POLICIES`, checked for completeness at import. How a
vendor's answer is mapped to a class lives with the vendors (`proxy.vendors.classify`);
what the router, health and API layers do with a class lives here and nowhere else.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from proxy.core.redact import clean

__all__ = [
    "POLICIES",
    "Blame",
    "BreakerVerdict",
    "ClassPolicy",
    "CooldownKind",
    "FailoverRule",
    "FinalError",
    "Outcome",
    "OutcomeClass",
    "aggregate",
]


class OutcomeClass(enum.StrEnum):
    """What happened to one upstream attempt (DESIGN.md "Error classification").

    The values are the `outcome_class` metric label and the access log's `outcome`: a
    contract."""

    SUCCESS = "success"
    QUOTA_EXHAUSTED = "quota_exhausted"
    RATE_LIMITED = "rate_limited"
    REQUEST_TOO_LARGE = "request_too_large"
    OVERLOADED = "overloaded"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    AUTH_ERROR = "auth_error"
    MODEL_UNAVAILABLE = "model_unavailable"
    CONTEXT_TOO_LONG = "context_too_long"
    CONTENT_FILTERED = "content_filtered"
    CLIENT_ERROR = "client_error"
    CLIENT_CANCELLED = "client_cancelled"


class FailoverRule(enum.StrEnum):
    """Whether the router may try the next candidate for the same request."""

    YES = "yes"
    NO = "no"
    CONTEXT_FALLBACK = "context_fallback"  # only to the group's larger-context fallback
    OPT_IN = "opt_in"  # only if the group opts in (`failover_on_content_filter`)


class CooldownKind(enum.StrEnum):
    """How long the deployment is skipped for new requests; the durations live in health/."""

    NONE = "none"
    QUOTA = "quota"  # long (config, default 1 h) or the known reset if later
    RATE_LIMIT = "rate_limit"  # retry-after / reset headers, else short backoff
    DOUBLING = "doubling"  # short, doubling on consecutive repeats (overloaded)
    UNREACHABLE = "unreachable"  # short, until a probe passes
    AUTH = "auth"  # long (config error)
    MODEL = "model"  # long (config error)


class BreakerVerdict(enum.StrEnum):
    """What an attempt of the class tells the deployment's circuit breaker."""

    FAILURE = "failure"  # vendor flakiness: counts toward opening it
    SUCCESS = "success"  # the vendor answered properly (the request was the problem)
    NEUTRAL = "neutral"  # says nothing about flakiness: a half-open trial is just given back


class Blame(enum.StrEnum):
    """Whose fault. A client-blamed outcome never counts against a deployment (no breaker
    failure, no cooldown); one the vendor answered (the request itself was refused) would
    fail on every deployment, so it is returned to the client as it is."""

    VENDOR = "vendor"
    OPERATOR = "operator"  # our account or config: billing, credentials, model names
    CLIENT = "client"


@dataclass(frozen=True, slots=True)
class ClassPolicy:
    """Everything the router, health and API layers do differently per class.

    `rank` orders the classes by how recoverable they are, for the client's answer when
    every candidate failed (the most recoverable class seen is reported). The `final_*`
    fields are that answer (VENDOR_WIRE_FORMATS.md section 6): `final_message` may hold
    `{retry_after}` and `{model}`; `final_retry_hint` carries the soonest vendor retry
    hint; `final_vendor_message` uses the vendor's own (sanitised) message instead.
    """

    fail_over: FailoverRule
    cooldown: CooldownKind
    breaker: BreakerVerdict
    blame: Blame
    rank: int
    final_status: int
    final_type: str
    final_code: str
    final_message: str
    should_retry: bool
    final_param: str | None = None
    final_retry_hint: bool = False
    final_vendor_message: bool = False

    @property
    def counts_toward_breaker(self) -> bool:
        return self.breaker is BreakerVerdict.FAILURE

    @property
    def returned_as_is(self) -> bool:
        """The vendor answered and refused the request itself: every deployment would."""
        return self.blame is Blame.CLIENT and self.breaker is BreakerVerdict.SUCCESS


_C = OutcomeClass
_F = FailoverRule
_K = CooldownKind
_V = BreakerVerdict
_B = Blame

# fmt: off
# Columns: fail over, cooldown, breaker verdict, blame, rank | final status, type, code,
# message, should_retry, param, retry hint, vendor message. DESIGN.md's table and
# VENDOR_WIRE_FORMATS.md section 6. Ranks: the transient vendor-side classes first (a
# retry may succeed), then request_too_large and model_unavailable (the client can act on
# them), then quota (it resets by itself) before auth (the operator's problem).
POLICIES: Mapping[OutcomeClass, ClassPolicy] = MappingProxyType({
    # Never aggregated (a success is relayed as is); present so `Outcome.policy` is total.
    _C.SUCCESS: ClassPolicy(
        _F.NO, _K.NONE, _V.SUCCESS, _B.VENDOR, 99,
        200, "", "", "", False),
    _C.RATE_LIMITED: ClassPolicy(
        _F.YES, _K.RATE_LIMIT, _V.NEUTRAL, _B.VENDOR, 0,
        429, "requests", "rate_limit_exceeded",
        "All upstream providers are rate limited; retry after {retry_after}s", True,
        final_retry_hint=True),
    _C.OVERLOADED: ClassPolicy(
        _F.YES, _K.DOUBLING, _V.FAILURE, _B.VENDOR, 1,
        503, "server_error", "upstream_overloaded",
        "All upstream providers are overloaded", True, final_retry_hint=True),
    _C.SERVER_ERROR: ClassPolicy(
        _F.YES, _K.NONE, _V.FAILURE, _B.VENDOR, 2,
        502, "server_error", "upstream_error",
        "Upstream providers returned server errors", True),
    _C.TIMEOUT: ClassPolicy(
        _F.YES, _K.NONE, _V.FAILURE, _B.VENDOR, 3,
        504, "server_error", "upstream_timeout",
        "Upstream providers timed out", True),
    _C.UNREACHABLE: ClassPolicy(
        _F.YES, _K.UNREACHABLE, _V.FAILURE, _B.VENDOR, 4,
        502, "server_error", "upstream_unreachable",
        "Could not connect to any upstream provider", True),
    _C.REQUEST_TOO_LARGE: ClassPolicy(
        _F.YES, _K.NONE, _V.NEUTRAL, _B.OPERATOR, 5,
        400, "invalid_request_error", "request_too_large",
        "Request exceeds every configured provider's per-minute token budget", False, "messages"),
    _C.MODEL_UNAVAILABLE: ClassPolicy(
        _F.YES, _K.MODEL, _V.NEUTRAL, _B.OPERATOR, 6,
        404, "invalid_request_error", "model_not_found",
        "Model '{model}' is not available from any provider", False, "model"),
    _C.QUOTA_EXHAUSTED: ClassPolicy(
        _F.YES, _K.QUOTA, _V.NEUTRAL, _B.OPERATOR, 7,
        429, "insufficient_quota", "insufficient_quota",
        "All upstream providers are out of quota", False),
    # Our credential, not the client's: never surface it as the client's 401.
    _C.AUTH_ERROR: ClassPolicy(
        _F.YES, _K.AUTH, _V.NEUTRAL, _B.OPERATOR, 8,
        503, "server_error", "upstream_auth_failed",
        "No upstream provider accepted the proxy's credentials", False),
    _C.CONTEXT_TOO_LONG: ClassPolicy(
        _F.CONTEXT_FALLBACK, _K.NONE, _V.SUCCESS, _B.CLIENT, 10,
        400, "invalid_request_error", "context_length_exceeded",
        "This request exceeds the context window of every eligible model", False, "messages",
        final_vendor_message=True),
    _C.CONTENT_FILTERED: ClassPolicy(
        _F.OPT_IN, _K.NONE, _V.SUCCESS, _B.CLIENT, 11,
        400, "invalid_request_error", "content_filter",
        "The request was rejected by the provider's content policy", False, "messages"),
    _C.CLIENT_ERROR: ClassPolicy(
        _F.NO, _K.NONE, _V.SUCCESS, _B.CLIENT, 12,
        400, "invalid_request_error", "invalid_request",
        "The upstream provider rejected the request", False, final_vendor_message=True),
    # The client went away (or a vendor says it did: a 499). Nobody may be listening; one
    # who is is better told what else failed, so it is ranked last, not returned as is.
    _C.CLIENT_CANCELLED: ClassPolicy(
        _F.NO, _K.NONE, _V.NEUTRAL, _B.CLIENT, 13,
        499, "invalid_request_error", "client_cancelled",
        "The client closed the request", False),
})
# fmt: on


def _check_policies() -> None:
    """Fail at import, not on the first outage, if the table is inconsistent."""
    if set(POLICIES) != set(OutcomeClass):
        raise RuntimeError("POLICIES must cover every OutcomeClass")
    ranks = [p.rank for p in POLICIES.values()]
    if len(set(ranks)) != len(ranks):
        raise RuntimeError("POLICIES: every class needs a rank of its own")
    for cls, p in POLICIES.items():
        if p.blame is Blame.CLIENT and (
            p.breaker is BreakerVerdict.FAILURE or p.cooldown is not CooldownKind.NONE
        ):
            raise RuntimeError(f"{cls}: a client's request must not count against a vendor")
        if p.fail_over is FailoverRule.YES and p.blame is Blame.CLIENT:
            raise RuntimeError(f"{cls}: a client-blamed failure would fail everywhere")


_check_policies()


@dataclass(frozen=True, slots=True)
class Outcome:
    """One classified upstream attempt.

    `message` is safe to show a client and to log: built only from the vendor's error
    type/code and message (key-like tokens redacted, ~300 chars), never from headers, request
    content or the raw body. `retry_after_s` is the vendor's own hint, None when it said
    nothing; the cooldown policy decides what to do without one.
    """

    cls: OutcomeClass
    status: int | None
    retry_after_s: float | None
    message: str
    vendor_code: str | None = None
    # Where an attempt without an answer failed: "connect", "first_byte" or "body".
    phase: str | None = None

    @property
    def policy(self) -> ClassPolicy:
        return POLICIES[self.cls]


@dataclass(frozen=True, slots=True)
class FinalError:
    """What the client gets when every candidate failed (OpenAI-style error body)."""

    status: int
    type: str
    code: str
    message: str
    retry_after_s: float | None
    should_retry: bool
    cls: OutcomeClass
    param: str | None = None

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        """`retry-after` (whole seconds) when known, and the Stainless `x-should-retry` hint."""
        out = {"x-should-retry": "true" if self.should_retry else "false"}
        if self.retry_after_s is not None:
            out["retry-after"] = str(math.ceil(self.retry_after_s))
        return out


_MODEL_UNKNOWN_MESSAGE: Final = "The requested model is not available from any provider"


def _final(cls: OutcomeClass, message: str, retry: float | None) -> FinalError:
    p = POLICIES[cls]
    return FinalError(
        p.final_status, p.final_type, p.final_code, message, retry, p.should_retry, cls,
        p.final_param,
    )  # fmt: skip


def aggregate(outcomes: Sequence[Outcome], *, model: str | None = None) -> FinalError:
    """The single error the client gets when no candidate succeeded.

    1. The first client-blamed outcome the vendor answered (context, content policy, bad
       request: `returned_as_is`) is returned as such: its class's status and code (a bad request keeps the upstream 4xx), and where
       the table says so the vendor's sanitised message.
    2. Otherwise the most recoverable class seen (`rank`), with section 6's body; a class
       with `final_retry_hint` carries the soonest retry-after (whole seconds, >= 1; rate
       limited always has one, so SDKs back off instead of hammering).
    SUCCESS entries are ignored; an empty list (no attempt could be made) is reported as an
    upstream error. `model` fills the model-not-found message.
    """
    failures = [o for o in outcomes if o.cls is not _C.SUCCESS]
    for o in failures:
        policy = o.policy
        if policy.returned_as_is:
            message = o.message if policy.final_vendor_message else ""
            final = _final(o.cls, message or policy.final_message, None)
            if o.cls is _C.CLIENT_ERROR and o.status is not None and 400 <= o.status < 500:
                return FinalError(
                    o.status, final.type, final.code, final.message, None, False, o.cls, None
                )
            return final
    if not failures:
        return _final(_C.SERVER_ERROR, POLICIES[_C.SERVER_ERROR].final_message, None)

    best = min(failures, key=lambda o: o.policy.rank).cls
    policy = POLICIES[best]
    retry: float | None = None
    if policy.final_retry_hint:
        hints = [o.retry_after_s for o in failures if o.cls is best and o.retry_after_s is not None]
        if hints:
            retry = float(max(1, math.ceil(min(hints))))
        elif best is _C.RATE_LIMITED:
            retry = 1.0
    template = policy.final_message
    if "{model}" in template and not model:
        message = _MODEL_UNKNOWN_MESSAGE
    else:
        message = template.format(
            retry_after=int(retry) if retry is not None else "",
            model=clean(model or "", 200),
        )
    return _final(best, message, retry)
