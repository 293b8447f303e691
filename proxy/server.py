"""Running the proxy as a process: listen, reload on SIGHUP, drain on SIGTERM.

Shutdown order matters to load balancers: readiness turns 503 first (so they stop sending),
then the listening socket closes, then in-flight requests and streams get up to the grace
period to finish, and only then are vendor pools closed and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from proxy.app import GATEWAY, create_app, listen
from proxy.config import Config, ConfigError
from proxy.fdlimit import FDS_PER_STREAM, raise_open_files_limit

__all__ = ["serve"]

log = logging.getLogger("llmproxy")


async def serve(
    config: Config,
    host: str,
    port: int,
    *,
    grace_s: float,
    drain_delay_s: float = 0.0,
    reuse_port: bool = False,
) -> None:
    """Serve until SIGTERM/SIGINT, then shut down gracefully."""
    _open_files(config.server.max_connections)
    app = create_app(config)
    gateway = app[GATEWAY]
    try:
        listener = await listen(app, host, port, grace_s=grace_s, reuse_port=reuse_port)
    except OSError as exc:
        raise SystemExit(f"llm-proxy: cannot listen on {host}:{port}: {exc.strerror}") from None
    log.info(
        "serving on http://%s:%d (config %s, version %s)",
        host,
        port,
        config.source,
        config.version,
        extra={"event": "start", "host": host, "port": port, "model_groups": list(config.models)},
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        with contextlib.suppress(ConfigError):  # already logged and counted; the old config stays
            await gateway.reload_from_file()

    def on_hup() -> None:
        task = loop.create_task(reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    gateway.ready = False
    log.info(
        "shutting down: draining in-flight requests for up to %.0f s",
        grace_s,
        extra={"event": "shutdown", "in_flight": gateway.router.active},
    )
    if drain_delay_s > 0:  # give load balancers time to see readiness fail before the socket closes
        await asyncio.sleep(drain_delay_s)
    await listener.close(grace_s)
    log.info("stopped", extra={"event": "stopped"})


def _open_files(max_connections: int) -> None:
    """Raise the open-file limit before the vendor pools are sized from it, and say so; warn
    when it cannot hold as many streams as the listener admits clients."""
    files = raise_open_files_limit()
    if files is None:
        return
    fields = {
        "event": "open_files_limit",
        "before": files.before,
        "limit": files.after,
        "hard_limit": files.hard,
    }
    if files.after > files.before:
        log.info(
            "open-file limit raised from %d to %d (about %d streams at once)",
            files.before,
            files.after,
            files.streams,
            extra=fields,
        )
    needed = FDS_PER_STREAM * max_connections
    if files.after < needed:
        why = f" (raising it failed: {files.error})" if files.error else ""
        log.warning(
            "the open-file limit is %d (hard limit %d)%s: about %d streams fit, but "
            "server.max_connections admits %d clients, each stream needing %d descriptors. "
            "Raise the hard limit to at least %d (ulimit -Hn, systemd LimitNOFILE=, docker "
            "--ulimit nofile=) or lower server.max_connections",
            files.after,
            files.hard,
            why,
            files.streams,
            max_connections,
            FDS_PER_STREAM,
            needed,
            extra={**fields, "needed": needed},
        )
