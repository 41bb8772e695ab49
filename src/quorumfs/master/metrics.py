"""A master's Prometheus metrics, served at ``GET /metrics`` (``http_api.build_app``).

``MasterMetrics`` owns the master's ``CollectorRegistry`` (one per master, never
the global one: tests run several masters in one process). It holds the Raft
node's instruments (``quorumfs.runtime.metrics.NodeMetrics``, ``quorumfs_raft_*``)
and reads the data path at scrape time (``quorumfs_master_*``):

- ``quorumfs_master_volume_servers{state}``: ``registered`` (in the journal: on
  every master), ``alive`` and ``writable`` (the leader's picture: the leader
  only);
- per volume server that heartbeated to this leader, ``volume_id`` label:
  ``quorumfs_master_volume_heartbeat_age_seconds``,
  ``quorumfs_master_volume_used_bytes``, ``quorumfs_master_volume_free_bytes``
  (a server no longer registered, or not heard by this leader, has no series);
- ``quorumfs_master_under_replicated_chunks`` and
  ``quorumfs_master_repairs_in_flight`` (leader only).

Series that only the leader knows are absent on the other masters: select the
leader with ``quorumfs_raft_role{role="LEADER"} == 1``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from quorumfs.runtime.metrics import NodeMetrics

from .data_service import DataService

__all__ = ["MasterMetrics"]


class MasterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.node = NodeMetrics(self.registry)
        """Give it to ``RaftNode(metrics=...)``."""

    def watch_data(self, data: DataService) -> None:
        """Report ``data``'s volume servers (once)."""
        self.registry.register(_DataCollector(data))


class _DataCollector(Collector):
    def __init__(self, data: DataService) -> None:
        self._data = data

    def collect(self) -> Iterable[Metric]:
        registered = self._data.service.namespace.volumes()
        servers = GaugeMetricFamily(
            "quorumfs_master_volume_servers",
            "Volume servers: registered (in the journal), alive and writable (the leader's "
            "picture: on the leader only)",
            labels=["state"],
        )
        servers.add_metric(["registered"], len(registered))
        topology = self._data.current_topology()
        if topology is None:
            yield servers
            return
        now = time.monotonic()
        options = topology.options
        heard = [
            server
            for volume_id, server in sorted(topology.servers.items())
            if volume_id in registered and server.last_heartbeat is not None
        ]
        servers.add_metric(["alive"], sum(s.alive(now, options) for s in heard))
        servers.add_metric(["writable"], sum(s.writable(now, options) for s in heard))
        yield servers
        age = GaugeMetricFamily(
            "quorumfs_master_volume_heartbeat_age_seconds",
            "Seconds since the leader last heard a heartbeat from the volume server",
            labels=["volume_id"],
        )
        used = GaugeMetricFamily(
            "quorumfs_master_volume_used_bytes",
            "Bytes of volume files the server reported",
            labels=["volume_id"],
        )
        free = GaugeMetricFamily(
            "quorumfs_master_volume_free_bytes",
            "Bytes the server reported it can still take (0: not writable)",
            labels=["volume_id"],
        )
        for server in heard:
            assert server.last_heartbeat is not None
            label = [str(server.volume_id)]
            age.add_metric(label, max(0.0, now - server.last_heartbeat))
            used.add_metric(label, server.used)
            free.add_metric(label, server.free)
        yield age
        yield used
        yield free
        yield GaugeMetricFamily(
            "quorumfs_master_under_replicated_chunks",
            "Chunks with fewer good copies than their goal, as of the last repair scan",
            value=topology.under_replicated,
        )
        yield GaugeMetricFamily(
            "quorumfs_master_repairs_in_flight",
            "Chunk copies the leader asked for and is waiting on",
            value=len(topology.repairs),
        )
