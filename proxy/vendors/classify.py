"""How vendors signal each outcome class: one ordered rule table for answers, one for
transport failures.

Every upstream attempt ends in exactly one `OutcomeClass` (`proxy.core.outcomes`, where the
table of what each class *means* lives). This module maps a vendor's answer to its class.
Keeping that mapping as data (`RULES`, `TRANSPORT_RULES`) means a vendor quirk is fixed by
adding a row, reviewed by reading a table, and tested row by row.

The rule order follows VENDOR_WIRE_FORMATS.md section 7: context-window signals first, then
billing and auth (vendors hide those behind 400/429, which otherwise mean "client error" and
"retry"), then the generic status/type rules. Classification runs only on failures, but it is
still on the request path, so all tables and regexes are built once at import, the vendor
message is lower-cased once per call, and nothing here can raise into the router.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from types import MappingProxyType
from typing import Final

import aiohttp
import orjson

from proxy.core.outcomes import Outcome, OutcomeClass
from proxy.core.redact import MAX_MATCH_CHARS, clean, redact_text
from proxy.core.vendor_types import VENDOR_TYPES
from proxy.http1 import (
    BodyIncomplete,
    DescribedError,
    InvalidHeader,
    PoolTimeout,
    ProtocolError,
    ResponseTooLarge,
)

__all__ = [
    "RULES",
    "TRANSPORT_RULES",
    "Rule",
    "TransportRule",
    "classify_response",
    "classify_stream_error",
    "classify_transport",
    "parse_go_duration",
    "retry_after_from",
    "without_secret",
]

_C = OutcomeClass


# --------------------------------------------------------------------------------------------
# The response rule table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the classifier: every field that is set must match (AND); within a set
    field any element may match (OR). Rows are tried in order; the first match wins.

    - `vendors`: vendor types it applies to (None = all; unknown types count as "openai").
    - `statuses`: the effective HTTP status (a 200 whose error body names a status uses that).
    - `codes`: lower-cased vendor identifiers: error type/code/status, Anthropic
      `details.error_code`, Google `ErrorInfo.reason` / `errors[].reason`, Azure
      `innererror.code`, Bedrock `x-amzn-ErrorType` / `__type` / in-stream exception name.
    - `not_codes`: identifiers that veto the row.
    - `phrases` / `pattern`: lower-case substrings / a regex searched in the lower-cased message.
    - `min_retry_after_s`: the parsed retry hint must be at least this (a header condition).
    - `predicate`: name in `_PREDICATES`, for signals no data field can express.
    """

    name: str
    cls: OutcomeClass
    vendors: frozenset[str] | None = None
    statuses: frozenset[int] | None = None
    codes: frozenset[str] | None = None
    not_codes: frozenset[str] = frozenset()
    phrases: tuple[str, ...] = ()
    pattern: re.Pattern[str] | None = None
    min_retry_after_s: float | None = None
    predicate: str | None = None


def _fs(*items: str) -> frozenset[str]:
    return frozenset(items)


def _st(*items: int) -> frozenset[int]:
    return frozenset(items)


_KNOWN_VENDORS: Final = frozenset(VENDOR_TYPES)

_ANY_4XX: Final = frozenset(range(400, 500))
_ANY_5XX: Final = frozenset(range(500, 600))
# Statuses a context-window error arrives with (Together uses 403; 200 = in-stream error).
_CONTEXT_STATUSES: Final = _st(200, 400, 403, 413, 422)

# Throttling identifiers. They veto the context phrases: Bedrock's throttling message is
# "Too many tokens, please wait before trying again", which contains a context phrase.
_THROTTLE_CODES: Final = _fs(
    "rate_limit_exceeded",  # OpenAI, Groq
    "rate_limit_error",  # Anthropic, Mistral
    "rate_limited",  # Mistral (observed)
    "slow_down",  # OpenAI (reported)
    "resource_exhausted",  # Gemini / Vertex
    "ratelimitexceeded",  # Vertex errors[].reason
    "throttlingexception",  # Bedrock
    "servicequotaexceededexception",  # Bedrock
)

# Section 2.10's list, plus three phrases from vendor messages the list misses:
# Together 403 "... must be less than the context length", Vertex "exceeds the model's input
# token limit", OpenAI Responses "Your input exceeds the context window of this model".
_CONTEXT_PHRASES: Final = (
    "maximum context length",
    "context_length_exceeded",
    "context length exceeded",
    "prompt is too long",
    "input is too long",
    "exceeds the maximum number of tokens",
    "too many tokens",
    "exceeds token limit",
    "exceed context limit",
    "context length",
    "context window",
    "input token limit",
)
# TGI-based servers (Together, HF): "`inputs` tokens + `max_new_tokens` must be <= 4097".
_TGI_CONTEXT_RE: Final = re.compile(r"max_new_tokens\W+must (?:be|not exceed)")

_BILLING_CODES: Final = _fs(
    "insufficient_quota",
    "credit_balance_exhausted",
    "organization_spend_limit_exceeded",
    "project_spend_limit_exceeded",
    "organization_usage_limit_exceeded",
    "billing_error",  # Anthropic 402
    "enforced_spend_limit_reached",  # Anthropic 429 details.error_code
)

_AUTH_CODES: Final = _fs(
    "invalid_api_key",  # OpenAI
    "authentication_error",  # Anthropic, Mistral
    "permission_error",  # Anthropic
    "api_key_invalid",  # Gemini ErrorInfo.reason on a 400
    "failed_precondition",  # Gemini: billing / region not enabled, Vertex org policy
    "permission_denied",  # Google
    "unauthenticated",  # Vertex expired token (after the adapter's one refresh)
    "accessdeniedexception",  # Bedrock
    "unrecognizedclientexception",  # AWS generic layer
    "incompletesignature",
    "invalidclienttokenid",
    "invalidsignatureexception",
    "signaturedoesnotmatch",
    "requestexpired",
    "expiredtokenexception",
    "missingauthenticationtokenexception",
    "notauthorized",
)

_NOT_FOUND_CODES: Final = _fs(
    "model_not_found",  # OpenAI
    "not_found_error",  # Anthropic, Ollama
    "not_found",  # Google
    "resourcenotfoundexception",  # Bedrock
    "deploymentnotfound",  # Azure
    "unknown_model",  # Mistral
)

_OVERLOADED_CODES: Final = _fs(
    "overloaded_error",  # Anthropic 529 / stream event
    "unavailable",  # Google 503
    "serviceunavailableexception",  # Bedrock
    "capacity_exceeded",  # Groq 498 (flex tier)
    "server_is_overloaded",  # OpenAI (reported)
)

_TIMEOUT_CODES: Final = _fs("modeltimeoutexception", "deadline_exceeded")

_SERVER_CODES: Final = _fs(
    "api_error",  # Anthropic, Ollama
    "server_error",  # OpenAI, Mistral
    "internal",  # Google
    "internalserverexception",  # Bedrock
    "modelerrorexception",  # Bedrock 424
    "modelstreamerrorexception",  # Bedrock 424 / stream frame
)

_REQUEST_TOO_LARGE_RE: Final = re.compile(r"request too large.*(?:tokens per min|\(tpm\))", re.S)
_COHERE_MONTHLY_RE: Final = re.compile(r"trial key.*(?:/\s*month|per month|a month|monthly)", re.S)

RULES: tuple[Rule, ...] = (
    # 1. Context window (section 7: before everything else; a fallback model can take it).
    Rule("context_code", _C.CONTEXT_TOO_LONG, codes=_fs("context_length_exceeded")),
    Rule(
        "context_phrase",
        _C.CONTEXT_TOO_LONG,
        statuses=_CONTEXT_STATUSES,
        not_codes=_THROTTLE_CODES,
        phrases=_CONTEXT_PHRASES,
    ),
    Rule("context_tgi", _C.CONTEXT_TOO_LONG, statuses=_CONTEXT_STATUSES, pattern=_TGI_CONTEXT_RE),
    # 2. Billing, before the generic 400/429 rules that would call it "client" or "retry".
    Rule("billing_code", _C.QUOTA_EXHAUSTED, codes=_BILLING_CODES),
    Rule("payment_required", _C.QUOTA_EXHAUSTED, statuses=_st(402)),
    Rule("credit_balance_low", _C.QUOTA_EXHAUSTED, phrases=("credit balance is too low",)),
    # Anthropic's spend cap as a 400: "You have reached your specified API usage limits.
    # You will regain access on 2026-04-01 at 00:00 UTC."
    Rule(
        "api_usage_limit", _C.QUOTA_EXHAUSTED, phrases=("reached your specified api usage limit",)
    ),
    Rule("google_per_day_quota", _C.QUOTA_EXHAUSTED, predicate="quota_id_per_day"),
    # Groq TPD/RPD, OpenAI RPD: "... on tokens per day (TPD): Limit 100000 ...".
    Rule(
        "daily_limit",
        _C.QUOTA_EXHAUSTED,
        statuses=_st(429),
        phrases=("tokens per day", "requests per day"),
    ),
    # Bedrock daily token quota: "Too many tokens per day, please wait before trying again."
    Rule(
        "bedrock_daily_quota",
        _C.QUOTA_EXHAUSTED,
        vendors=_fs("bedrock"),
        codes=_fs("throttlingexception", "servicequotaexceededexception"),
        phrases=("per day", "daily"),
    ),
    Rule(
        "cohere_trial_monthly",
        _C.QUOTA_EXHAUSTED,
        vendors=_fs("cohere"),
        statuses=_st(429),
        pattern=_COHERE_MONTHLY_RE,
    ),
    # Azure "Please retry after 86400 seconds" (header or message): a daily/tier cap. Applied
    # to every vendor: an hour-long wait on a 429 is a quota whoever sends it.
    Rule("long_retry_after", _C.QUOTA_EXHAUSTED, statuses=_st(429), min_retry_after_s=3600.0),
    # 3. One request over the whole per-minute budget (OpenAI 429, Groq 413): never succeeds
    #    on this account, but the vendor is healthy.
    Rule("request_too_large_tpm", _C.REQUEST_TOO_LARGE, pattern=_REQUEST_TOO_LARGE_RE),
    # 4. Content policy on the input.
    Rule(
        "content_policy_code",
        _C.CONTENT_FILTERED,
        codes=_fs("invalid_prompt", "content_filter", "responsibleaipolicyviolation"),
    ),
    Rule("gemini_prompt_blocked", _C.CONTENT_FILTERED, predicate="prompt_blocked"),
    Rule("cohere_unsafe", _C.CONTENT_FILTERED, vendors=_fs("cohere"), statuses=_st(498)),
    # 5. Upstream credentials (Gemini reports an invalid key as a 400).
    Rule("auth_code", _C.AUTH_ERROR, codes=_AUTH_CODES),
    Rule("auth_status", _C.AUTH_ERROR, statuses=_st(401, 403)),
    Rule(
        "api_key_phrase",
        _C.AUTH_ERROR,
        statuses=_st(400),
        phrases=("api key not valid", "api key expired"),
    ),
    # 6. Model or deployment not found (config error). Not a response id the vendor does not
    #    hold (previous_response_id, GET /responses/{id}): the request names what is not there.
    Rule("response_not_found_code", _C.CLIENT_ERROR, codes=_fs("previous_response_not_found")),
    Rule(
        "response_not_found",
        _C.CLIENT_ERROR,
        statuses=_st(404),
        pattern=re.compile(r"\bresponse with id '[^']*' not found"),
    ),
    Rule("not_found_status", _C.MODEL_UNAVAILABLE, statuses=_st(404)),
    Rule("not_found_code", _C.MODEL_UNAVAILABLE, codes=_NOT_FOUND_CODES),
    # 7. 429 family: capacity shortages dressed as 429 first, then plain rate limits.
    Rule("model_not_ready", _C.OVERLOADED, codes=_fs("modelnotreadyexception")),
    Rule(
        "vertex_shared_capacity",
        _C.OVERLOADED,
        phrases=("resource exhausted, please try again later",),
    ),
    Rule("rate_limit_status", _C.RATE_LIMITED, statuses=_st(429)),
    Rule("rate_limit_code", _C.RATE_LIMITED, codes=_THROTTLE_CODES),
    # 8. Overloaded (Cohere's 498 was taken by rule 4).
    Rule("overloaded_status", _C.OVERLOADED, statuses=_st(503, 529, 498)),
    Rule("overloaded_code", _C.OVERLOADED, codes=_OVERLOADED_CODES),
    # 9. Server-side timeouts.
    Rule("timeout_status", _C.TIMEOUT, statuses=_st(408, 504)),
    Rule("timeout_code", _C.TIMEOUT, codes=_TIMEOUT_CODES),
    # 10. Other 5xx and 424 (failed dependency: the model failed).
    Rule("server_status", _C.SERVER_ERROR, statuses=_ANY_5XX | {424}),
    Rule("server_code", _C.SERVER_ERROR, codes=_SERVER_CODES),
    # 11. Cancelled (Gemini/Groq/Cohere 499, Google CANCELLED).
    Rule("cancelled_status", _C.CLIENT_CANCELLED, statuses=_st(499)),
    Rule("cancelled_code", _C.CLIENT_CANCELLED, codes=_fs("cancelled")),
    # 12. Any other 4xx (incl. plain 413, 422): the request itself is wrong.
    Rule("client_status", _C.CLIENT_ERROR, statuses=_ANY_4XX),
    # 13. Anything else (e.g. an unrecognised error event in a 200 stream) is the vendor's.
    Rule("fallback", _C.SERVER_ERROR),
)


@dataclass(frozen=True, slots=True)
class _Ctx:
    """What the rules look at, computed once per classified response."""

    vendor: str
    status: int
    ids: tuple[str, ...]
    msg: str
    retry_after: float | None
    quota_ids: tuple[str, ...]
    prompt_block: str | None


_PREDICATES: Mapping[str, Callable[[_Ctx], bool]] = MappingProxyType(
    {
        # Gemini/Vertex QuotaFailure: a per-day quota resets at midnight Pacific, not in seconds.
        "quota_id_per_day": lambda ctx: any("perday" in q for q in ctx.quota_ids),
        # Gemini 200 with promptFeedback.blockReason and no candidates: the input was blocked.
        "prompt_blocked": lambda ctx: ctx.prompt_block is not None,
    }
)


def _check_tables() -> None:
    """Fail at import, not on the first outage, if a table is inconsistent."""
    for rule in RULES:
        if rule.predicate is not None and rule.predicate not in _PREDICATES:
            raise RuntimeError(f"rule {rule.name}: unknown predicate {rule.predicate!r}")
        if rule.vendors is not None and not rule.vendors <= _KNOWN_VENDORS:
            raise RuntimeError(f"rule {rule.name}: unknown vendor type")
    last = RULES[-1]
    if (last.vendors, last.statuses, last.codes, last.phrases, last.pattern, last.predicate) != (
        None,
        None,
        None,
        (),
        None,
        None,
    ):
        raise RuntimeError("the last rule must be an unconditional fallback")


def _rule_matches(rule: Rule, ctx: _Ctx) -> bool:
    if rule.vendors is not None and ctx.vendor not in rule.vendors:
        return False
    if rule.statuses is not None and ctx.status not in rule.statuses:
        return False
    if rule.codes is not None and rule.codes.isdisjoint(ctx.ids):
        return False
    if rule.not_codes and not rule.not_codes.isdisjoint(ctx.ids):
        return False
    if rule.phrases and not any(p in ctx.msg for p in rule.phrases):
        return False
    if rule.pattern is not None and rule.pattern.search(ctx.msg) is None:
        return False
    if rule.min_retry_after_s is not None and (
        ctx.retry_after is None or ctx.retry_after < rule.min_retry_after_s
    ):
        return False
    return rule.predicate is None or _PREDICATES[rule.predicate](ctx)


def _first_match(ctx: _Ctx) -> Rule:
    for rule in RULES:
        if _rule_matches(rule, ctx):
            return rule
    return RULES[-1]  # unreachable: the last rule is unconditional


# --------------------------------------------------------------------------------------------
# Error body parsing (every vendor shape of section 2 into one flat record)
# --------------------------------------------------------------------------------------------

_MAX_JSON_BYTES: Final = 1 << 20  # error bodies are small; do not parse a mistaken huge body
_MAX_MATCH_CHARS: Final = MAX_MATCH_CHARS  # message prefix the rules and regexes look at
_MAX_LABEL_CHARS: Final = 64
_MAX_LIST_ITEMS: Final = 16
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class _Parsed:
    doc: object  # the error JSON (first object of a list), for RetryInfo
    labels: tuple[str, ...]  # vendor identifiers, most specific first, original case
    message: str  # the vendor's message, raw (sanitised only when summarised)
    implied_status: int | None  # a status named inside the body (Google/vLLM code, Azure status)
    quota_ids: tuple[str, ...]  # lower-case Google QuotaFailure quotaIds
    prompt_block: str | None  # Gemini promptFeedback.blockReason


def _add_label(labels: list[str], value: object) -> None:
    """Keep short textual identifiers; numbers are statuses (or Mistral's opaque "1300")."""
    if isinstance(value, str):
        v = value.strip()
        if v and len(v) <= _MAX_LABEL_CHARS and not v.isdigit() and v.lower() != "error":
            labels.append(v)


def _as_str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _status_in(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and len(value) == 3 and value.isascii() and value.isdigit():
        n = int(value)
    else:
        return None
    return n if 400 <= n <= 599 else None


def _sse_data(data: bytes) -> bytes:
    """The `data:` payload of an SSE event handed over whole (`event: error\\ndata: {...}`)."""
    parts = [line[5:].strip() for line in data.splitlines() if line.startswith(b"data:")]
    return b"\n".join(parts)


def _load_json(body: bytes) -> object:
    if not body or len(body) > _MAX_JSON_BYTES:
        return None
    data = body.strip()
    if data.startswith((b"data:", b"event:")):
        data = _sse_data(data)
    if not data.startswith((b"{", b"[")):  # HTML from a gateway, plain text, empty
        return None
    try:
        return orjson.loads(data)
    except (orjson.JSONDecodeError, ValueError, TypeError):  # truncated, too deep, not UTF-8
        return None


def _parse(headers: Mapping[str, str], body: bytes) -> _Parsed:
    labels: list[str] = []
    quota_ids: list[str] = []
    message = ""
    implied: int | None = None
    prompt_block: str | None = None

    amzn = headers.get("x-amzn-errortype")
    if isinstance(amzn, str):  # "ThrottlingException:http://internal.amazon.com/coral/..."
        _add_label(labels, amzn.split(":", 1)[0])

    doc = _load_json(body)
    if isinstance(doc, list):  # Gemini's OpenAI-compatible surface wraps the error in a list
        doc = next((x for x in doc[:_MAX_LIST_ITEMS] if isinstance(x, dict)), None)
    if not isinstance(doc, dict):
        return _Parsed(doc, tuple(labels), message, implied, (), None)

    err = doc.get("error")
    response = doc.get("response")
    if err is None and isinstance(response, dict):  # Responses API `response.failed` event
        err = response.get("error")
    if isinstance(err, dict):  # OpenAI, Azure, Anthropic, Google RPC, vLLM, Ollama, Groq
        src = err
        details = err.get("details")
        if isinstance(details, dict):  # Anthropic: details.error_code
            _add_label(labels, details.get("error_code"))
        elif isinstance(details, list):  # Google: typed detail messages
            for item in details[:_MAX_LIST_ITEMS]:
                if not isinstance(item, dict):
                    continue
                kind = _as_str(item.get("@type"))
                if kind.endswith("ErrorInfo"):
                    _add_label(labels, item.get("reason"))
                elif kind.endswith("QuotaFailure"):
                    violations = item.get("violations")
                    if isinstance(violations, list):
                        for v in violations[:_MAX_LIST_ITEMS]:
                            if isinstance(v, dict):
                                qid = v.get("quotaId")
                                if isinstance(qid, str):
                                    quota_ids.append(qid.lower())
        inner = err.get("innererror")  # Azure content filter
        if isinstance(inner, dict):
            _add_label(labels, inner.get("code"))
        errors = err.get("errors")  # Vertex: [{"reason": "rateLimitExceeded"}]
        if isinstance(errors, list):
            for e in errors[:_MAX_LIST_ITEMS]:
                if isinstance(e, dict):
                    _add_label(labels, e.get("reason"))
    else:  # flat: Mistral, old vLLM, Cohere {"message"}, Bedrock rest-json, in-stream frames
        src = doc
        if isinstance(err, str):  # {"error": "model not found"} (Ollama native, TGI)
            message = err
        aws_type = doc.get("__type")
        if isinstance(aws_type, str):  # "com.amazon.coral.validate#ValidationException"
            _add_label(labels, aws_type.rsplit("#", 1)[-1].split(":", 1)[0])
        if len(doc) == 1:  # Bedrock stream exception as decoded: {"throttlingException": {...}}
            key, value = next(iter(doc.items()))
            if isinstance(value, dict) and key.endswith("Exception"):
                _add_label(labels, key)
                src = value
        if doc.get("type") == "message-end":  # Cohere v2 stream end with an error
            delta = doc.get("delta")
            if isinstance(delta, dict) and delta.get("finish_reason") == "ERROR":
                e = delta.get("error")
                message = _as_str(e.get("message")) if isinstance(e, dict) else _as_str(e)
                message = message or "stream ended with finish_reason ERROR"
        feedback = doc.get("promptFeedback")
        if isinstance(feedback, dict) and not doc.get("candidates"):
            reason = feedback.get("blockReason")
            if isinstance(reason, str) and reason:
                prompt_block = reason[:_MAX_LABEL_CHARS]
                message = f"prompt blocked (blockReason {prompt_block})"

    _add_label(labels, src.get("code"))
    if not (src is doc and doc.get("type") == "message-end"):  # a Cohere event name, not a code
        _add_label(labels, src.get("type"))
    _add_label(labels, src.get("status"))
    message = message or _as_str(src.get("message")) or _as_str(src.get("Message"))
    implied = _status_in(src.get("code")) or _status_in(src.get("status"))
    return _Parsed(doc, tuple(labels), message, implied, tuple(quota_ids), prompt_block)


# --------------------------------------------------------------------------------------------
# Retry hints (VENDOR_WIRE_FORMATS.md section 3)
# --------------------------------------------------------------------------------------------

_GO_UNITS: Mapping[str, float] = MappingProxyType(
    {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ns": 1e-9}
)
_GO_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"
_GO_UNIT = r"(?:ns|us|µs|μs|ms|h|m|s)"  # "ms" before "m"
_GO_FULL_RE: Final = re.compile(rf"(?:{_GO_NUM}{_GO_UNIT})+")
_GO_PART_RE: Final = re.compile(rf"({_GO_NUM})({_GO_UNIT})")


def parse_go_duration(s: str) -> float | None:
    """Seconds in a Go `time.Duration` string ("6m0s", "1h2m3.5s", "12ms", "9m38.016s").

    OpenAI and Groq send their `x-ratelimit-reset-*` headers and "try again in" hints in this
    format. Returns None for anything that is not a whole, non-negative duration (so a garbage
    header never turns into a zero cooldown). Trailing sentence punctuation is tolerated
    because the value is also cut out of prose ("Please try again in 4.77s.").
    """
    if not isinstance(s, str) or len(s) > 64:
        return None
    s = s.strip().rstrip(".,;")
    if s == "0":
        return 0.0
    if not s or _GO_FULL_RE.fullmatch(s) is None:
        return None
    total = sum(float(num) * _GO_UNITS[unit] for num, unit in _GO_PART_RE.findall(s))
    return total if math.isfinite(total) else None


def _float(value: object) -> float | None:
    if not isinstance(value, str) or len(value) > 32:
        return None
    try:
        f = float(value.strip())
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def _epoch(dt: datetime) -> float:
    return (dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)).timestamp()


def _from_retry_after_ms(h: Mapping[str, str], doc: object, msg: str, now: float) -> float | None:
    ms = _float(h.get("retry-after-ms"))
    return None if ms is None else ms / 1000.0


def _from_retry_after(h: Mapping[str, str], doc: object, msg: str, now: float) -> float | None:
    raw = h.get("retry-after")
    if not isinstance(raw, str):
        return None
    seconds = _float(raw)
    if seconds is not None:
        return seconds
    try:  # RFC 9110 HTTP-date
        return _epoch(parsedate_to_datetime(raw)) - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _from_google_retry_info(
    h: Mapping[str, str], doc: object, msg: str, now: float
) -> float | None:
    if isinstance(doc, list):
        doc = next((x for x in doc[:_MAX_LIST_ITEMS] if isinstance(x, dict)), None)
    err = doc.get("error") if isinstance(doc, dict) else None
    details = err.get("details") if isinstance(err, dict) else None
    if not isinstance(details, list):
        return None
    for item in details[:_MAX_LIST_ITEMS]:
        if isinstance(item, dict) and _as_str(item.get("@type")).endswith("RetryInfo"):
            delay = item.get("retryDelay")
            if isinstance(delay, str):  # protobuf Duration JSON: "42s", "42.096307241s"
                return _float(delay.strip().removesuffix("s"))
            if isinstance(delay, dict):  # {"seconds": "42", "nanos": 96307241}
                sec = _float(str(delay.get("seconds", "0")))
                nanos = _float(str(delay.get("nanos", "0")))
                if sec is not None and nanos is not None:
                    return sec + nanos / 1e9
    return None


_ANTHROPIC_BUCKETS: Final = tuple(
    (f"anthropic-ratelimit-{b}-remaining", f"anthropic-ratelimit-{b}-reset")
    for b in ("requests", "tokens", "input-tokens", "output-tokens")
)
_OPENAI_BUCKETS: Final = tuple(
    (f"x-ratelimit-remaining-{b}", f"x-ratelimit-reset-{b}")
    for b in ("requests", "tokens", "requests_usage_based", "tokens_usage_based")
)


def _exhausted(h: Mapping[str, str], remaining_header: str) -> bool:
    remaining = _float(h.get(remaining_header))
    return remaining is not None and remaining <= 0


def _from_anthropic_reset(h: Mapping[str, str], doc: object, msg: str, now: float) -> float | None:
    """The bucket is full again at the latest reset among the exhausted buckets."""
    best: float | None = None
    for remaining, reset in _ANTHROPIC_BUCKETS:
        if not _exhausted(h, remaining):
            continue
        raw = h.get(reset)
        if not isinstance(raw, str) or len(raw) > 64:
            continue
        try:
            at = _epoch(datetime.fromisoformat(raw.strip()))
        except (ValueError, OverflowError):
            continue
        best = at if best is None else max(best, at)
    return None if best is None else best - now


def _from_openai_reset(h: Mapping[str, str], doc: object, msg: str, now: float) -> float | None:
    best: float | None = None
    for remaining, reset in _OPENAI_BUCKETS:
        if not _exhausted(h, remaining):
            continue
        raw = h.get(reset)
        wait = parse_go_duration(raw) if isinstance(raw, str) else None
        if wait is not None:
            best = wait if best is None else max(best, wait)
    return best


def _regain_access_at(m: re.Match[str], now: float) -> float | None:
    try:
        at = datetime.fromisoformat(f"{m.group(1)}T{m.group(2)}:00+00:00")
    except ValueError:
        return None
    return at.timestamp() - now


_MESSAGE_HINTS: tuple[
    tuple[re.Pattern[str], Callable[[re.Match[str], float], float | None]], ...
] = (
    # Azure: "Please retry after 37 seconds."
    (re.compile(r"retry after (\d+(?:\.\d+)?) seconds?", re.I), lambda m, _: _float(m.group(1))),
    # OpenAI / Groq: "Please try again in 1.2s", "... in 9m38.016s", "... in 20ms"
    (re.compile(r"try again in ([0-9hmsuµ.]+)", re.I), lambda m, _: parse_go_duration(m.group(1))),
    # Gemini: "Please retry in 42.09s."
    (re.compile(r"retry in ([0-9.]+)\s*s", re.I), lambda m, _: _float(m.group(1))),
    # Anthropic spend cap: "You will regain access on 2026-04-01 at 00:00 UTC."
    (
        re.compile(r"regain access on (\d{4}-\d{2}-\d{2}) at (\d{2}:\d{2}) utc", re.I),
        _regain_access_at,
    ),
)


def _from_message(h: Mapping[str, str], doc: object, msg: str, now: float) -> float | None:
    if not msg:
        return None
    text = msg[:_MAX_MATCH_CHARS]
    for pattern, convert in _MESSAGE_HINTS:
        m = pattern.search(text)
        if m is not None:
            value = convert(m, now)
            if value is not None:
                return value
    return None


# Section 3's order: explicit headers, Google's body hint, exhausted-bucket resets, prose.
_RETRY_HINT_SOURCES: tuple[Callable[[Mapping[str, str], object, str, float], float | None], ...] = (
    _from_retry_after_ms,
    _from_retry_after,
    _from_google_retry_info,
    _from_anthropic_reset,
    _from_openai_reset,
    _from_message,
)


def retry_after_from(
    headers: Mapping[str, str], error_json: object, message: str, now: float
) -> float | None:
    """Seconds the vendor asked us to wait, from the first source that says anything.

    `now` is wall-clock epoch seconds (HTTP-dates and RFC 3339 resets are absolute).
    Negative waits are clamped to 0; long waits are *not* capped: the stored cooldown must
    honour Azure's 86400 s, only an in-request wait is capped (by the router).
    Returns None when nothing said anything, so the cooldown policy uses its own backoff.
    """
    for source in _RETRY_HINT_SOURCES:
        try:
            value = source(headers, error_json, message, now)
        except Exception:  # a vendor header must never break classification
            value = None
        if value is not None:
            return max(0.0, value)
    return None


# --------------------------------------------------------------------------------------------
# Message sanitising
# --------------------------------------------------------------------------------------------


def without_secret(outcome: Outcome, secret: str | None) -> Outcome:
    """``outcome`` with a literal ``secret`` removed from its message (``clean`` removes
    only key-*shaped* tokens; an Azure key is 32 bare hex digits)."""
    if not secret or secret not in outcome.message:
        return outcome
    return dataclasses.replace(outcome, message=redact_text(outcome.message, secret))


def _status_text(status: int | None) -> str:
    if status is None:
        return "no response"
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def _summary(label: str | None, vendor_message: str, status: int) -> str:
    text = clean(vendor_message) if vendor_message else ""
    if label and text:
        return f"{label}: {text}"
    if text:
        return text
    if label:
        return f"{label} ({_status_text(status)})"
    if status < 400:
        return f"unrecognised upstream error event ({_status_text(status)})"
    return _status_text(status)


# --------------------------------------------------------------------------------------------
# Public classifiers
# --------------------------------------------------------------------------------------------


def _normalise_vendor(vendor_type: str) -> str:
    if vendor_type in _KNOWN_VENDORS:
        return vendor_type
    lowered = vendor_type.lower() if isinstance(vendor_type, str) else ""
    return lowered if lowered in _KNOWN_VENDORS else "openai"


def _classify(vendor_type: str, status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
    parsed = _parse(headers, body)
    effective = status
    if status < 400 and parsed.implied_status is not None:
        effective = parsed.implied_status  # in-stream error naming its own status
    ids = tuple(label.lower() for label in parsed.labels)
    retry = retry_after_from(headers, parsed.doc, parsed.message, time.time())
    ctx = _Ctx(
        vendor=_normalise_vendor(vendor_type),
        status=effective,
        ids=ids,
        msg=parsed.message[:_MAX_MATCH_CHARS].lower(),
        retry_after=retry,
        quota_ids=parsed.quota_ids,
        prompt_block=parsed.prompt_block,
    )
    rule = _first_match(ctx)
    vendor_code: str | None = parsed.labels[0] if parsed.labels else None
    if rule.codes is not None:  # report the identifier that decided it
        for low, label in zip(ids, parsed.labels, strict=True):
            if low in rule.codes:
                vendor_code = label
                break
    if vendor_code is not None:
        vendor_code = clean(vendor_code, _MAX_LABEL_CHARS)
    return Outcome(
        cls=rule.cls,
        status=effective,
        retry_after_s=retry,
        message=_summary(vendor_code, parsed.message, effective),
        vendor_code=vendor_code,
    )


def classify_response(
    vendor_type: str, status: int, headers: Mapping[str, str], body: bytes
) -> Outcome:
    """Classify an upstream HTTP response that is (or turned out to be) an error.

    Works for every section-2 body shape, empty/HTML/truncated bodies, and 200 responses
    whose body or stream carried an error (pass the original 200 or the status the error
    implies; a status named inside the body is used when the given one is < 400, and the
    rules also match on the error type, e.g. Anthropic `overloaded_error`). Never raises:
    a classifier crash during an outage would turn a failover into a 500.
    Never returns SUCCESS: the caller decides success before calling.
    """
    try:
        raw = body if isinstance(body, bytes) else bytes(body)
        return _classify(vendor_type, status, headers or _NO_HEADERS, raw)
    except Exception:
        try:  # defensive: classify on the status alone
            return _classify(vendor_type, status, _NO_HEADERS, b"")
        except Exception:
            return Outcome(_C.SERVER_ERROR, None, None, "unclassifiable upstream error")


def classify_stream_error(vendor_type: str, event_data: bytes) -> Outcome:
    """Classify an error event seen inside a 200 stream (OpenAI `{"error": ...}` chunk,
    Responses API `error` and `response.failed` events, Anthropic `event: error` data,
    Gemini error chunk, Bedrock exception frame payload, Cohere `message-end` with ERROR). `event_data` is the event's data (an `event:`/`data:`
    prefixed SSE block is accepted too)."""
    return classify_response(vendor_type, 200, _NO_HEADERS, event_data)


@dataclass(frozen=True, slots=True)
class TransportRule:
    """A row of the transport classifier: exception types (isinstance) and the phases it
    applies to (None = any), tried in order like `RULES`. `retry_after_s` is the retry
    hint the outcome carries (0: no cooldown for a class that would otherwise back off)."""

    name: str
    types: tuple[type[BaseException], ...]
    phases: frozenset[str] | None
    cls: OutcomeClass
    summary: str
    retry_after_s: float | None = None


_CONNECTION_ERRORS: Final[tuple[type[BaseException], ...]] = (
    aiohttp.ClientConnectionError,  # ClientConnectorError (+DNS/SSL/cert), ServerDisconnected...
    ConnectionError,  # refused, reset, aborted, broken pipe
    socket.gaierror,  # DNS outside aiohttp's wrapper
    ssl.SSLError,  # TLS (CertificateError is a subclass)
)
_BEFORE_RESPONSE: Final = _fs("connect", "first_byte")

TRANSPORT_RULES: tuple[TransportRule, ...] = (
    TransportRule("cancelled", (asyncio.CancelledError,), None, _C.CLIENT_CANCELLED, "cancelled"),
    # Every connection the vendor's pool allows was busy for the whole pool wait: the
    # proxy's own capacity, like a deployment at its caps (a 429 of our own). The vendor
    # was not contacted, so no breaker failure and, with a zero hint, no cooldown; the
    # request moves on to a deployment that has room. Before "timeout": it is one too.
    TransportRule(
        "pool_exhausted",
        (PoolTimeout,),
        None,
        _C.RATE_LIMITED,
        "no free upstream connection",
        retry_after_s=0.0,
    ),
    # aiohttp's ServerTimeoutError/ConnectionTimeoutError subclass TimeoutError (and it is
    # asyncio.TimeoutError since 3.11): a timeout in any phase is a timeout, not "unreachable".
    TransportRule("timeout", (TimeoutError,), None, _C.TIMEOUT, "timed out"),
    # The response started and then broke off: the vendor sent a truncated answer.
    TransportRule(
        "truncated",
        (aiohttp.ClientPayloadError, BodyIncomplete),
        None,
        _C.SERVER_ERROR,
        "truncated response",
    ),
    # Past max_response_bytes or max_decompressed_bytes: the connection is closed.
    TransportRule(
        "too_large", (ResponseTooLarge,), None, _C.SERVER_ERROR, "response over a size cap"
    ),
    # Not HTTP we can read (bad status line, bad chunking, an unknown content-encoding).
    TransportRule("malformed", (ProtocolError,), None, _C.SERVER_ERROR, "malformed response"),
    # A request header that cannot be sent (a client's forwarded header with a line break
    # or a non-Latin-1 character): nothing was sent, and no vendor would take it.
    TransportRule(
        "invalid_header", (InvalidHeader,), None, _C.CLIENT_ERROR, "invalid request header"
    ),
    TransportRule(
        "lost_mid_body",
        _CONNECTION_ERRORS,
        _fs("body"),
        _C.SERVER_ERROR,
        "connection lost mid-response",
    ),
    # No response yet: the request never reached a model, so replaying it elsewhere is safe.
    TransportRule(
        "unreachable", _CONNECTION_ERRORS, _BEFORE_RESPONSE, _C.UNREACHABLE, "unreachable"
    ),
)

_PHASE_TEXT: Mapping[str, str] = MappingProxyType(
    {
        "connect": "while connecting",
        "first_byte": "waiting for the first byte",
        "body": "while reading the body",
    }
)


def _detail(exc: BaseException) -> str:
    """What the exception itself says, where that is known to be safe to show: the
    upstream client's own errors (see `DescribedError`), else the OS's reason."""
    if isinstance(exc, DescribedError):
        return f" ({clean(str(exc), 240)})"
    return _os_detail(exc)


def _os_detail(exc: BaseException) -> str:
    """The OS reason ("Connection refused") without the URL, which may carry a key."""
    os_error = getattr(exc, "os_error", None)  # aiohttp.ClientConnectorError
    source = os_error if isinstance(os_error, OSError) else exc
    detail = getattr(source, "strerror", None) if isinstance(source, OSError) else None
    return f" ({clean(detail, 80)})" if isinstance(detail, str) and detail else ""


def classify_transport(exc: BaseException, *, phase: str) -> Outcome:
    """Classify an exception raised instead of (or while reading) an upstream response.

    `phase` is "connect", "first_byte" or "body": the same connection error means
    "unreachable" before a response (failover is free) and "truncated answer" (a server error)
    after it started. The message names the class and phase, never `str(exc)`, which can
    contain the request URL (Gemini puts the key in the query string).
    """
    try:
        if isinstance(exc, aiohttp.ClientResponseError) and not isinstance(
            exc, aiohttp.ClientPayloadError
        ):  # raise_for_status(): the vendor did answer
            return classify_response("openai", exc.status, exc.headers or _NO_HEADERS, b"")
        name = type(exc).__name__
        where = _PHASE_TEXT.get(phase, "")
        for rule in TRANSPORT_RULES:
            if isinstance(exc, rule.types) and (rule.phases is None or phase in rule.phases):
                text = f"{rule.summary} {where}".strip()
                message = f"{text}: {name}{_detail(exc)}"
                return Outcome(rule.cls, None, rule.retry_after_s, message, name, phase)
        return Outcome(
            _C.SERVER_ERROR, None, None, f"unexpected {name} {where}".rstrip(), name, phase
        )
    except Exception:
        return Outcome(_C.SERVER_ERROR, None, None, "unexpected transport error", phase=phase)


_check_tables()
