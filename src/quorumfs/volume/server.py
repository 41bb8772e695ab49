"""One volume server process: its directory, its HTTP site, its heartbeats, its shutdown.

The volume server's directory (``--dir``) holds::

    identity.json   the volume id the leader assigned: written once, then sticky
    chunks/         the chunk store (``quorumfs.volume.store``)

Owns putting the parts together and taking them apart in order; the parts
are ``store`` (the chunks), ``http_api`` (serving them) and ``heartbeat`` (the
masters). The masters are reached through ``quorumfs.client.AsyncMasterClient``
with the volume token derived from the cluster secret; write tokens are
checked with the key derived from the same secret. ``--mserver`` is a list of
masters, or one ``NAME:PORT`` whose DNS records are the masters
(``DiscoveredMasters``).

Shutdown (``stop`` set, SIGINT or SIGTERM): heartbeats and compaction stop
first; the site stops listening, and uploads still streaming in are given up
to ``SHUTDOWN_GRACE`` to finish (aiohttp's own shutdown would stop reading
their bodies at once); then the runner gives the other requests in flight up
to ``READ_GRACE`` and closes the connections, the leader's tasks are
cancelled, and the store is closed last (it waits for a write still in a
worker thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiohttp import web

from quorumfs.client import (
    AsyncMasterClient,
    DnsMasters,
    RetryPolicy,
    dns_name_of,
    parse_address,
)
from quorumfs.tokens import MIN_SECRET_BYTES, SECRET_ENV, volume_token

from .errors import StoreInUseError
from .heartbeat import (
    DEFAULT_COMPACTION_INTERVAL,
    HeartbeatLoop,
    IdentityFile,
    MasterList,
)
from .http_api import build_app, writes_finished
from .store import ChunkStore

__all__ = [
    "READ_GRACE",
    "SHUTDOWN_GRACE",
    "DiscoveredMasters",
    "VolumeOptions",
    "VolumeStartupError",
    "run_volume",
]

logger = logging.getLogger("quorumfs.volume")

SHUTDOWN_GRACE: Final = 30.0
"""Seconds uploads in flight are given to finish when stopping."""
READ_GRACE: Final = 5.0
"""Seconds other requests in flight (reads) are given after that."""
IDENTITY_FILE: Final = "identity.json"
CHUNKS_DIR: Final = "chunks"


class VolumeStartupError(Exception):
    """The volume server cannot start as asked; the message says what to do instead."""


@dataclass(frozen=True)
class VolumeOptions:
    dir: Path
    ip: str = "127.0.0.1"
    """Address to listen on (and to advertise, unless ``public_address`` is given)."""
    port: int = 8080
    masters: tuple[str, ...] = ("127.0.0.1:9333",)
    """HTTP addresses of masters to start from (``--mserver``); the leader names the rest.
    One ``NAME:PORT`` (a host that is not an IP address) is resolved through DNS
    (``DiscoveredMasters``)."""
    dns_server: str | None = None
    """The nameserver to resolve a master name with (``ip`` or ``ip:port``,
    ``--dns-server``); None: the system's."""
    secret: str | None = None
    """The cluster secret (at least ``MIN_SECRET_BYTES``); required."""
    max_bytes: int | None = None
    """The most bytes of volume files to keep (``--max``); None: as the disk allows."""
    pulse_ms: int = 1000
    """Milliseconds between heartbeats until the leader says otherwise."""
    fsync: bool = True
    """False only for tests: nothing is durable."""
    compaction_interval: float = DEFAULT_COMPACTION_INTERVAL
    """Seconds between looks for volumes worth compacting."""
    public_address: str | None = None
    """``host:port`` clients are told to use; ``ip:port`` when None."""

    @property
    def address(self) -> str:
        return self.public_address or f"{self.ip}:{self.port}"


class DiscoveredMasters(MasterList):
    """``--mserver NAME:PORT``: the masters NAME resolves to (``DnsMasters``, re-resolved
    every few seconds), then the others the leader named in its last answer."""

    def __init__(self, dns: DnsMasters) -> None:
        super().__init__(dns.target)
        self.dns = dns

    @property
    def current(self) -> tuple[str, ...]:
        learned = self._learned_masters()
        return _unique(self.dns.answer + learned) or (self.dns.target,)

    async def addresses(self) -> Sequence[str]:
        learned = self._learned_masters()
        try:
            resolved = await self.dns.addresses()
        except OSError:
            if not learned:
                raise
            return learned  # never resolved, but a leader was reached once and named them
        return _unique((*resolved, *learned))

    def _learned_masters(self) -> tuple[str, ...]:
        """What ``MasterList`` learned from the leader: its list less the name itself."""
        return tuple(a for a in super().current if a != self.dns.target)

    def __repr__(self) -> str:
        return f"DiscoveredMasters({self.dns!r})"


def _unique(addresses: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(addresses))


def _masters(options: VolumeOptions) -> MasterList:
    """``--mserver`` as a ``MasterList``; ``ValueError`` when malformed."""
    name = dns_name_of(options.masters)
    if name is None:
        return MasterList(options.masters)
    return DiscoveredMasters(DnsMasters(name, nameserver=options.dns_server))


def _check(options: VolumeOptions) -> tuple[bytes, MasterList]:
    """The secret and the masters, or ``VolumeStartupError`` saying what is wrong."""
    if not options.secret:
        raise VolumeStartupError(
            f"a volume server needs the cluster secret of its masters: set {SECRET_ENV} (or "
            "--secret) to the value the masters were given"
        )
    secret = options.secret.encode()
    if len(secret) < MIN_SECRET_BYTES:
        raise VolumeStartupError(f"the cluster secret must be at least {MIN_SECRET_BYTES} bytes")
    try:
        masters = _masters(options)
        parse_address(options.address)
    except ValueError as error:
        raise VolumeStartupError(str(error)) from None
    if not 0 < options.pulse_ms <= 60_000:
        raise VolumeStartupError(f"the pulse must be 1..60000 ms, not {options.pulse_ms}")
    if not options.compaction_interval > 0:
        raise VolumeStartupError("the compaction interval must be positive")
    return secret, masters


async def run_volume(
    options: VolumeOptions,
    *,
    started: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run a volume server until ``stop`` is set (or SIGINT/SIGTERM).

    Raises ``VolumeStartupError`` (before serving anything) when it cannot start.
    """
    secret, masters = _check(options)
    stop = stop or asyncio.Event()
    try:
        options.dir.mkdir(parents=True, exist_ok=True)
        store = await asyncio.to_thread(
            ChunkStore.open,
            options.dir / CHUNKS_DIR,
            max_bytes=options.max_bytes,
            fsync=options.fsync,
        )
    except StoreInUseError as error:
        raise VolumeStartupError(str(error)) from None
    except OSError as error:
        raise VolumeStartupError(f"cannot open {options.dir}: {error}") from None
    pulse = options.pulse_ms / 1000
    client = AsyncMasterClient(
        masters,
        policy=RetryPolicy(connect_timeout=min(1.0, pulse / 2)),
        token=volume_token(secret),
    )
    try:
        heart = HeartbeatLoop(
            store,
            client,
            address=options.address,
            directory=options.dir,
            identity=IdentityFile(options.dir / IDENTITY_FILE, fsync=options.fsync),
            masters=masters,
            pulse=pulse,
        )
    except ValueError as error:  # identity.json is unreadable
        store.close()
        raise VolumeStartupError(str(error)) from None
    app = build_app(store, heart, secret=secret)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=READ_GRACE)
    site: web.TCPSite | None = None
    """Set once listening."""
    background: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    signals: list[signal.Signals] = []
    try:
        await runner.setup()
        listening = web.TCPSite(runner, options.ip, options.port, reuse_address=True)
        try:
            await listening.start()
        except OSError as error:  # asyncio's message names the address again: use errno's
            reason = os.strerror(error.errno) if error.errno else str(error)
            raise VolumeStartupError(
                f"cannot listen on {options.ip}:{options.port}: {reason}"
            ) from None
        site = listening
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
                loop.add_signal_handler(sig, stop.set)
                signals.append(sig)
        background.append(asyncio.create_task(heart.run()))
        background.append(
            asyncio.create_task(heart.tasks.compact_forever(options.compaction_interval))
        )
        message = (
            f"volume server {heart.volume_id or '(not registered yet)'} serving "
            f"http://{options.address}, chunks in {options.dir / CHUNKS_DIR}, "
            f"masters {', '.join(masters.current)}"
        )
        logger.info(message)
        if started is not None:
            started(message)
        await stop.wait()
        logger.info("volume server %d stopping", heart.volume_id)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if site is not None:
            await site.stop()  # no new connections; uploads in flight go on
            if not await writes_finished(app, SHUTDOWN_GRACE):
                logger.warning("uploads still running after %g s: cut off", SHUTDOWN_GRACE)
        await runner.cleanup()
        await heart.tasks.close()
        await client.close()
        if isinstance(masters, DiscoveredMasters):
            await masters.dns.aclose()
        await asyncio.to_thread(store.close)
