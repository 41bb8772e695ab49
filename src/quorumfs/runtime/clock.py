"""``WallClock``: a master's one source of wall-clock time, which fault tests can shift.

Every wall-clock read of a master goes through one ``WallClock`` (``run_master``
makes it and hands it to the node's lease log, the HTTP API and the data
service): file modification times the master stamps, write-token expiries and
the time it tells volume servers in heartbeat answers, and the wall time of
``lease.log`` lines. ``offset`` (seconds, 0 by default) is added to the host's
clock, so a fault test can jump one master's wall clock forward or back at run
time (``PUT /debug/faults`` with ``wall_clock_offset_ms``, on a master started
with ``--fault-injection``) without touching the host's clock, or its other
processes'. (libfaketime cannot do this: it breaks Python's ``time.sleep``.)

Nothing that times leases, ticks, elections or timeouts reads this clock: they
use the monotonic clock (``time.monotonic``, ``loop.time()``), which a jump of
the wall clock does not move. The core counts ticks and reads no clock at all.
"""

from __future__ import annotations

import time

__all__ = ["WallClock"]


class WallClock:
    """The host's wall clock plus ``offset`` seconds."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset
        """Seconds added to the host's wall clock; set at run time by fault tests only."""

    def time(self) -> float:
        """Seconds since the Unix epoch, as ``time.time()``."""
        return time.time() + self.offset

    def time_ns(self) -> int:
        """Nanoseconds since the Unix epoch, as ``time.time_ns()``."""
        return time.time_ns() + round(self.offset * 1_000_000_000)

    def time_ms(self) -> int:
        """Whole milliseconds since the Unix epoch."""
        return self.time_ns() // 1_000_000
