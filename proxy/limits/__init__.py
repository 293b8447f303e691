"""Client keys, limits (rpm, tpm, max_concurrent, daily tokens and budget), loop detection
and the usage ledger: runaway-agent protection that never locks a paying client out wrongly."""

from proxy.core.usage import estimate_tokens
from proxy.limits.admission import OPEN, ClientState, Limits, Ticket
from proxy.limits.ledger import LedgerError, UsageLedger

__all__ = [
    "OPEN",
    "ClientState",
    "LedgerError",
    "Limits",
    "Ticket",
    "UsageLedger",
    "estimate_tokens",
]
