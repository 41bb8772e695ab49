"""A volume server's Prometheus metrics (``quorumfs_volume_*``), served at ``GET /metrics``.

``VolumeMetrics`` owns the server's ``CollectorRegistry`` (one per server, never
the global one: tests run several in one process). The HTTP handlers count
and time the chunks they serve (``chunk_written``, ``chunk_read``: one
counter increment and one histogram observation per request); the rest is
read at scrape time from the store and the heartbeat loop (usage, corrupt
chunks, heartbeats, replication), in a worker thread, as ``/status`` does: the
store's numbers are taken under its lock and the free space with statvfs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Final

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .heartbeat import HeartbeatLoop, measure
from .store import ChunkStore

__all__ = ["LATENCY_BUCKETS", "VolumeMetrics"]

LATENCY_BUCKETS: Final = (
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
)
"""Seconds: a small chunk from the page cache to a 64 MiB one over a slow link."""


class VolumeMetrics:
    def __init__(self, store: ChunkStore, heart: HeartbeatLoop) -> None:
        self.registry = CollectorRegistry()
        self._bytes_written = Counter(
            "quorumfs_volume_bytes_written",
            "Chunk bytes stored by client uploads (PUT /chunks/{id}, answered 201)",
            registry=self.registry,
        )
        self._bytes_read = Counter(
            "quorumfs_volume_bytes_read",
            "Chunk bytes served whole by GET /chunks/{id} (ranges count what they asked)",
            registry=self.registry,
        )
        self._chunks_written = Counter(
            "quorumfs_volume_chunks_written",
            "Chunks stored by client uploads",
            registry=self.registry,
        )
        self._chunks_read = Counter(
            "quorumfs_volume_chunks_read",
            "Chunk reads served to the end",
            registry=self.registry,
        )
        self._put_seconds = Histogram(
            "quorumfs_volume_put_seconds",
            "Seconds a chunk upload took, body and fsync included (successful ones)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._get_seconds = Histogram(
            "quorumfs_volume_get_seconds",
            "Seconds a chunk read took, to its last byte (successful ones)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_VolumeCollector(store, heart))

    def chunk_written(self, size: int, seconds: float) -> None:
        self._chunks_written.inc()
        self._bytes_written.inc(size)
        self._put_seconds.observe(seconds)

    def chunk_read(self, size: int, seconds: float) -> None:
        """Thread-safe (streamed reads finish in a worker thread)."""
        self._chunks_read.inc()
        self._bytes_read.inc(size)
        self._get_seconds.observe(seconds)

    async def handle(self, _request: web.Request) -> web.Response:
        """``GET /metrics``: the text format, collected in a worker thread."""
        body = await asyncio.to_thread(generate_latest, self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class _VolumeCollector(Collector):
    def __init__(self, store: ChunkStore, heart: HeartbeatLoop) -> None:
        self._store = store
        self._heart = heart

    def collect(self) -> Iterable[Metric]:
        heart, tasks = self._heart, self._heart.tasks
        capacity, used, free, count = measure(self._store, heart.directory)
        yield _gauge(
            "quorumfs_volume_id", "The volume id the leader assigned (0: none yet)", heart.volume_id
        )
        yield _gauge("quorumfs_volume_chunks", "Chunks stored here", count)
        yield _gauge("quorumfs_volume_used_bytes", "Bytes of volume files on disk", used)
        yield _gauge(
            "quorumfs_volume_free_bytes",
            "Bytes that can still be written (the lesser of --max left and the disk's free "
            "space; 0 once writes are refused)",
            free,
        )
        if capacity is not None:
            yield _gauge(
                "quorumfs_volume_capacity_bytes", "--max: the most bytes to keep", capacity
            )
        yield _gauge(
            "quorumfs_volume_corrupt_chunks",
            "Chunks known to be damaged here (reported to the leader, not served)",
            len(self._store.corrupt_chunks()),
        )
        yield _gauge(
            "quorumfs_volume_writable", "1 while the store takes writes", int(self._store.writable)
        )
        since = heart.since_acknowledged()
        if since is not None:
            yield _gauge(
                "quorumfs_volume_heartbeat_age_seconds",
                "Seconds since the leader last acknowledged a heartbeat (absent before the first)",
                since,
            )
        beats = CounterMetricFamily(
            "quorumfs_volume_heartbeats",
            "Heartbeats sent, by result: acknowledged by the leader, or failed",
            labels=["result"],
        )
        beats.add_metric(["acknowledged"], heart.acknowledged_total)
        beats.add_metric(["failed"], heart.failed_total)
        yield beats
        copies = CounterMetricFamily(
            "quorumfs_volume_replication_copies",
            "Chunk copies the leader asked for, by result: done, or failed on every source",
            labels=["result"],
        )
        copies.add_metric(["done"], tasks.copies_done)
        copies.add_metric(["failed"], tasks.copies_failed)
        yield copies
        deleted = CounterMetricFamily(
            "quorumfs_volume_chunks_deleted", "Chunks deleted as the leader asked"
        )
        deleted.add_metric([], tasks.chunks_deleted)
        yield deleted


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))
