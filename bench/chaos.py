"""`python -m bench.chaos`: the chaos scenarios of tests/chaos, run longer, as a table.

Same scenarios and measurements as the fast set in ``make test`` (see
``tests/chaos/scenarios.py``), with more requests per scenario (``--requests``, default
200) and a higher concurrency, so percentiles and "requests after detection" mean
something. The table goes into ``bench/RESULTS.md`` between its own markers, inside the
hand-written notes section that the benchmark harness (``bench/run.py``) keeps when it
rewrites the file: either tool can run without clobbering the other.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench import report
from tests.chaos.scenarios import SCENARIOS, Scenario, ScenarioResult, redis_killed, run_scenario
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- chaos: begin (written by `python -m bench.chaos`; edits inside are lost) -->"
END = "<!-- chaos: end -->"


def table(rows: Sequence[tuple[Scenario, ScenarioResult]], args: argparse.Namespace) -> str:
    out = [
        BEGIN,
        "## Chaos scenarios (issue 8)",
        "",
        f"Written by `python -m bench.chaos --requests {args.requests} --concurrency "
        f"{args.concurrency}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
        f"(Python {platform.python_version()}). Two fake OpenAI vendors, `a` (primary, "
        "faulted) and `b` (healthy backup; none in `*_alone`), the proxy in process with "
        "compressed timeouts (first byte 1 s, attempt 3 s, stream idle 1 s; breaker "
        "fail_max 3, reset 1 s). Added latency is over a healthy baseline of the same "
        "traffic. *After detection*: requests the failing vendor received while the proxy "
        "had it marked down. *Tokens wasted*: tokens the vendors billed (answers plus "
        "streams cut short) that no client received.",
        "",
        "| scenario | what | client errors | bound | added p50 (ms) | added p99 (ms) |"
        " to failing vendor (after detection / all) | tokens wasted |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for sc, r in rows:
        if sc.max_errors is None:
            bound = "0"
        else:
            bound = "bounded: no backup" if not sc.backup else "bounded: bytes already relayed"
        out.append(
            f"| {sc.name} | {sc.title} | {r.errors}/{r.requests} | {bound} | "
            f"{r.added_p50_ms:+.0f} | {r.added_p99_ms:+.0f} | {r.after_detection} / {r.a_requests} | "
            f"{r.tokens_wasted} |"
        )
    out += ["", END]
    return "\n".join(out)


def write(path: Path, section: str) -> None:
    """Replace our section in ``path`` (or append it to the notes), keeping everything else."""
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        if report.NOTES_MARK not in text:
            text = text.rstrip("\n") + "\n\n" + report.NOTES_MARK + "\n"
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


async def main_async(args: argparse.Namespace) -> int:
    scenarios = [SCENARIOS[n] for n in (args.only or SCENARIOS)]
    rows: list[tuple[Scenario, ScenarioResult]] = []
    redis_bin = shutil.which("redis-server")
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(redis_bin, Path(tmp)) if redis_bin and not args.only else None
        if redis is not None:
            redis.start()
            scenarios.append(redis_killed(redis))
        try:
            for sc in scenarios:
                n = min(args.requests, sc.requests * args.requests // 40)
                result = await run_scenario(sc, requests=n, concurrency=args.concurrency,
                                            baseline=args.requests // 2)  # fmt: skip
                print(result.line(), flush=True)
                rows.append((sc, result))
        finally:
            if redis is not None:
                redis.kill()
    section = table(rows, args)
    print(section)
    if args.out is not None:
        write(args.out, section)
        print(f"bench.chaos: wrote its section of {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), help="run only these")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md",
                   help="the report to write the section into (default bench/RESULTS.md)")  # fmt: skip
    return asyncio.run(main_async(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
