"""The usage ledger: per client, per UTC day, per model group, what was used and what it cost.

Rows live in memory (the hot path only adds to them) and are written to SQLite by one
background writer on its own thread, in batches: every request that settles while a batch
is being written joins the next one (group commit). A request's response is completed only
after the batch holding its usage has committed, so a `kill -9` of the proxy loses at most
the requests still in flight. Rows are written as absolute values (an upsert of the whole
row), which makes a retried batch harmless: each request is accounted exactly once.

SQLite runs in WAL mode with `synchronous=NORMAL`: a commit survives the process dying
(the OS has the WAL pages), not a power cut of the machine. One proxy process per file.

With a shared state backend (replicas), every request is also added to the cluster's
ledger in Redis through the backend's exactly-once counters (`usage:<day>` hashes): the
admin API reads the cluster's totals there, and `refresh` keeps a copy of the other
replicas' usage today, so daily limits count the whole cluster's spending. Each replica's
SQLite file, if set, keeps what that replica served.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from proxy.state.base import StateBackend, StateBackendDown

__all__ = ["LedgerError", "UsageLedger", "UsageRow", "utc_day"]

log = logging.getLogger("llmproxy.ledger")

# How long a request waits for its batch to commit before its response goes out anyway:
# a slow or broken disk must never hold up (or fail) a paying client's answer.
_DURABLE_WAIT_S = 2.0
# After a failed write, wait this long before the next try (the rows stay dirty).
_RETRY_S = 1.0
# Costs travel to the shared ledger as integer nano-dollars (counters are integers).
_NANO = 1_000_000_000
# The shared ledger's fields: "<client>\t<model group>\t<UsageRow field>".
_SHARED_FIELDS = ("requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    day TEXT NOT NULL,
    client TEXT NOT NULL,
    model_group TEXT NOT NULL,
    requests INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    PRIMARY KEY (day, client, model_group)
);
CREATE INDEX IF NOT EXISTS usage_by_client ON usage (client, day);
CREATE TABLE IF NOT EXISTS limit_resets (
    day TEXT NOT NULL,
    client TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (day, client)
);
"""
_UPSERT_USAGE = (
    "INSERT INTO usage (day, client, model_group, requests, errors, prompt_tokens, "
    "completion_tokens, cached_tokens, cost_usd) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (day, client, model_group) DO UPDATE SET requests = excluded.requests, "
    "errors = excluded.errors, prompt_tokens = excluded.prompt_tokens, "
    "completion_tokens = excluded.completion_tokens, cached_tokens = excluded.cached_tokens, "
    "cost_usd = excluded.cost_usd"
)
_UPSERT_RESET = (
    "INSERT INTO limit_resets (day, client, tokens, cost_usd, at) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (day, client) DO UPDATE SET tokens = excluded.tokens, "
    "cost_usd = excluded.cost_usd, at = excluded.at"
)
_COLUMNS = "day, client, model_group, requests, errors, prompt_tokens, completion_tokens, cached_tokens, cost_usd"


class LedgerError(Exception):
    """The ledger's SQLite file cannot be opened or created (a start-up error)."""


def utc_day(wall: float) -> str:
    """The accounting day of a wall-clock time: its UTC date, `YYYY-MM-DD`."""
    return time.strftime("%Y-%m-%d", time.gmtime(wall))


@dataclass(slots=True)
class UsageRow:
    """One client's use of one model group on one UTC day."""

    requests: int = 0  # admitted requests, answered or not
    errors: int = 0  # of those, the ones that got no successful answer
    prompt_tokens: int = 0  # as the vendors reported them (cached ones included)
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def values(self) -> tuple[int, int, int, int, int, float]:
        return (
            self.requests,
            self.errors,
            self.prompt_tokens,
            self.completion_tokens,
            self.cached_tokens,
            self.cost_usd,
        )


RowKey = tuple[str, str, str]  # (day, client, model_group)
ResetKey = tuple[str, str]  # (day, client)


class UsageLedger:
    """Usage rows in memory, persisted to SQLite in the background when `path` is set."""

    def __init__(
        self,
        path: str | None,
        backend: StateBackend | None = None,
        *,
        create_directory: bool = False,
    ) -> None:
        self.path = path
        self.create_directory = create_directory  # the default location: made if missing
        self.backend = backend if backend is not None and backend.shared else None
        # Other replicas' usage today per client (tokens, cost), as of the last `refresh`.
        self.others: dict[str, tuple[int, float]] = {}
        self.others_day = ""
        self.rows: dict[RowKey, UsageRow] = {}
        # Usage already counted when a client's limits were last reset (admin), per day.
        self.resets: dict[ResetKey, tuple[int, float]] = {}
        self._dirty: set[RowKey] = set()
        self._dirty_resets: set[ResetKey] = set()
        self._con: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._writer: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._batch: asyncio.Future[None] | None = None  # resolved when the next write commits
        self._closing = False

    @property
    def persistent(self) -> bool:
        return self.path is not None

    @property
    def opened(self) -> bool:
        return self._wake is not None

    # ------------------------------------------------------------------ lifecycle

    async def open(self, today: str) -> None:
        """Open (or create) the file and load `today`'s rows; before serving."""
        self._wake = asyncio.Event()
        if self.path is None:
            return
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="llmproxy-ledger")
        loop = asyncio.get_running_loop()
        try:
            rows, resets = await loop.run_in_executor(self._executor, self._open_sync, today)
        except (sqlite3.Error, OSError) as exc:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise LedgerError(
                f"cannot open the usage ledger {self.path!r} (state.sqlite_path): {exc}"
            ) from None
        for day, client, group, *values in rows:
            self.rows[(day, client, group)] = UsageRow(*values)
        for day, client, tokens, cost in resets:
            self.resets[(day, client)] = (tokens, cost)
        self._writer = asyncio.create_task(self._write_loop(), name="llmproxy-ledger-writer")

    def _open_sync(self, today: str) -> tuple[list[Any], list[Any]]:
        assert self.path is not None
        parent = os.path.dirname(os.path.abspath(self.path))
        if self.create_directory:
            os.makedirs(parent, mode=0o700, exist_ok=True)
        if not os.path.isdir(parent):
            raise OSError(f"the directory {parent!r} does not exist")
        con = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute("PRAGMA busy_timeout=5000")
            con.executescript(_SCHEMA)
            rows = con.execute(f"SELECT {_COLUMNS} FROM usage WHERE day = ?", (today,)).fetchall()
            resets = con.execute(
                "SELECT day, client, tokens, cost_usd FROM limit_resets WHERE day = ?", (today,)
            ).fetchall()
        except BaseException:
            con.close()
            raise
        self._con = con
        return rows, resets

    async def close(self) -> None:
        """Write what is left and close the file (after in-flight requests have drained)."""
        self._closing = True
        if self._writer is not None:
            if self._dirty or self._dirty_resets:
                await self.flush()
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        if self._executor is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._close_sync)
            self._executor.shutdown(wait=True)
            self._executor = None

    def _close_sync(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    # ------------------------------------------------------------------ recording (hot path)

    def record(
        self,
        day: str,
        client: str,
        group: str,
        *,
        ok: bool,
        prompt: int,
        completion: int,
        cached: int,
        cost_usd: float,
    ) -> asyncio.Future[None] | None:
        """Account one request. Returns a future that resolves once it is on disk (None in memory mode)."""
        key = (day, client, group)
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = UsageRow()
        row.requests += 1
        if not ok:
            row.errors += 1
        row.prompt_tokens += prompt
        row.completion_tokens += completion
        row.cached_tokens += cached
        row.cost_usd += cost_usd
        if self.backend is not None:
            self._share(day, client, group, ok, prompt, completion, cached, cost_usd)
        if self._writer is None:
            return None
        self._dirty.add(key)
        return self._schedule()

    def _share(
        self,
        day: str,
        client: str,
        group: str,
        ok: bool,
        prompt: int,
        completion: int,
        cached: int,
        cost_usd: float,
    ) -> None:
        assert self.backend is not None
        key, prefix = f"usage:{day}", f"{client}\t{group}\t"
        add = self.backend.add
        add(key, prefix + "requests", 1)
        for name, amount in (
            ("errors", 0 if ok else 1),
            ("prompt_tokens", prompt),
            ("completion_tokens", completion),
            ("cached_tokens", cached),
            ("cost_usd", round(cost_usd * _NANO)),
        ):
            if amount:
                add(key, prefix + name, amount)

    async def cluster_day(self, day: str) -> dict[tuple[str, str], UsageRow]:
        """The whole cluster's usage on `day` per (client, group); raises StateBackendDown."""
        assert self.backend is not None
        out: dict[tuple[str, str], UsageRow] = {}
        for name, value in (await self.backend.counters(f"usage:{day}")).items():
            client, group, field = name.split("\t")
            row = out.get((client, group))
            if row is None:
                row = out[(client, group)] = UsageRow()
            if field == "cost_usd":
                row.cost_usd = value / _NANO
            elif field in _SHARED_FIELDS:
                setattr(row, field, value)
        return out

    async def refresh(self, day: str) -> None:
        """Update `others`: the cluster's usage today minus this replica's (StateBackendDown:
        the last known figures stay)."""
        cluster = await self.cluster_day(day)
        totals: dict[str, tuple[int, float]] = {}
        for (client, _), row in cluster.items():
            t, c = totals.get(client, (0, 0.0))
            totals[client] = (t + row.tokens, c + row.cost_usd)
        others: dict[str, tuple[int, float]] = {}
        for client, (t, c) in totals.items():
            ours_t, ours_c = self._ours(day, client)
            others[client] = (max(0, t - ours_t), max(0.0, c - ours_c))
        self.others, self.others_day = others, day

    def others_today(self, day: str, client: str) -> tuple[int, float]:
        return self.others.get(client, (0, 0.0)) if day == self.others_day else (0, 0.0)

    def _ours(self, day: str, client: str) -> tuple[int, float]:
        tokens = 0
        cost = 0.0
        for (d, c, _), r in self.rows.items():
            if d == day and c == client:
                tokens += r.tokens
                cost += r.cost_usd
        return tokens, cost

    def mark_reset(self, day: str, client: str) -> tuple[int, float]:
        """Remember `client`'s usage today (the cluster's, as last known) as the base its
        limits now count from."""
        tokens, cost = self._ours(day, client)
        other_t, other_c = self.others_today(day, client)
        tokens, cost = tokens + other_t, cost + other_c
        self.resets[(day, client)] = (tokens, cost)
        if self._writer is not None:
            self._dirty_resets.add((day, client))
            self._schedule()
        return tokens, cost

    def counted_today(self, day: str, client: str) -> tuple[int, float]:
        """Tokens and cost of `client` on `day` that count toward its daily limits (the
        cluster's, with a shared backend)."""
        tokens, cost = self._ours(day, client)
        other_t, other_c = self.others_today(day, client)
        tokens, cost = tokens + other_t, cost + other_c
        base_tokens, base_cost = self.resets.get((day, client), (0, 0.0))
        return tokens - base_tokens, cost - base_cost

    def _schedule(self) -> asyncio.Future[None]:
        batch = self._batch
        if batch is None:
            batch = self._batch = asyncio.get_running_loop().create_future()
            assert self._wake is not None
            self._wake.set()
        return batch

    async def durable(self, batch: asyncio.Future[None] | None) -> None:
        """Wait (bounded) until `batch` has committed; never raises into a request."""
        if batch is None or batch.done():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(batch), _DURABLE_WAIT_S)

    async def flush(self) -> None:
        """Wait until everything recorded so far is on disk."""
        if self._writer is None or not (self._dirty or self._dirty_resets or self._batch):
            return
        batch = self._batch or self._schedule()
        await asyncio.shield(batch)

    # ------------------------------------------------------------------ the writer

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._batch = self._batch, None
            keys, self._dirty = self._dirty, set()
            reset_keys, self._dirty_resets = self._dirty_resets, set()
            rows = [(*k, *self.rows[k].values()) for k in keys]
            resets = [(*k, *self.resets[k], _now_iso()) for k in reset_keys]
            try:
                await loop.run_in_executor(self._executor, self._write_sync, rows, resets)
            except Exception as exc:
                log.error(
                    "usage ledger write failed (%d rows kept, retrying): %s",
                    len(rows),
                    exc,
                    extra={"event": "ledger_error", "path": self.path},
                )
                self._dirty |= keys
                self._dirty_resets |= reset_keys
                if batch is not None and not batch.done():
                    batch.set_result(None)
                if not self._closing:
                    await asyncio.sleep(_RETRY_S)
                    self._schedule()
                continue
            if batch is not None and not batch.done():
                batch.set_result(None)
            self._prune(keys)

    def _write_sync(self, rows: list[tuple[Any, ...]], resets: list[tuple[Any, ...]]) -> None:
        con = self._con
        assert con is not None
        con.execute("BEGIN")
        try:
            con.executemany(_UPSERT_USAGE, rows)
            con.executemany(_UPSERT_RESET, resets)
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def _prune(self, written: Iterable[RowKey]) -> None:
        """Drop written rows of past days from memory: they live on in the file."""
        today = utc_day(time.time())
        for key in written:
            if key[0] != today and key not in self._dirty:
                self.rows.pop(key, None)

    # ------------------------------------------------------------------ queries (admin)

    async def query_cluster(
        self, client: str | None, since: str, until: str
    ) -> list[dict[str, Any]] | None:
        """Rows of the whole cluster from day `since` to `until`, oldest first; None without a
        shared backend or while it is down (the caller falls back to this replica's rows)."""
        if self.backend is None:
            return None
        days: list[str] = []
        wall = calendar.timegm(time.strptime(until, "%Y-%m-%d"))
        while len(days) < 400 and (day := utc_day(wall - 86400 * len(days))) >= since:
            days.append(day)
        try:
            per_day = await asyncio.gather(*(self.cluster_day(d) for d in reversed(days)))
        except StateBackendDown:
            return None
        return [
            {"day": d, "client": c, "model_group": g, **_row_dict(r)}
            for d, rows in zip(reversed(days), per_day, strict=True)
            for (c, g), r in sorted(rows.items())
            if client is None or c == client
        ]

    async def query(self, client: str | None, since: str) -> list[dict[str, Any]]:
        """Rows from day `since` on (for one client or all), oldest first."""
        if self._executor is None:
            return [
                {"day": d, "client": c, "model_group": g, **_row_dict(r)}
                for (d, c, g), r in sorted(self.rows.items())
                if d >= since and (client is None or c == client)
            ]
        await self.flush()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._query_sync, client, since)

    def _query_sync(self, client: str | None, since: str) -> list[dict[str, Any]]:
        assert self._con is not None
        sql = f"SELECT {_COLUMNS} FROM usage WHERE day >= ?"
        args: list[Any] = [since]
        if client is not None:
            sql += " AND client = ?"
            args.append(client)
        out = []
        for day, c, group, *values in self._con.execute(
            sql + " ORDER BY day, client, model_group", args
        ):
            out.append(
                {"day": day, "client": c, "model_group": group, **_row_dict(UsageRow(*values))}
            )
        return out


def _row_dict(row: UsageRow) -> dict[str, Any]:
    d = asdict(row)
    d["cost_usd"] = round(row.cost_usd, 6)
    return d


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
