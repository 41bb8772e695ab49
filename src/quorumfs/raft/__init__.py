"""The consensus core: a pure, deterministic Raft state machine.

No I/O, no clock, no threads, no global randomness (an import contract and a
test check this). Drive it through ``RawNode``: ``tick``, ``step``,
``propose``, ``read_index``, ``transfer_leadership``, ``propose_membership``
in; ``Ready`` batches out, acknowledged with ``advance``. rawnode.py gives the
driver loop.
"""

from .bootstrap import bootstrap_log
from .config import Config, ConfigError, RandomSource, ReadOnlyOption, TestingKnobs
from .errors import DroppedError
from .messages import (
    CAMPAIGN_TRANSFER,
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)
from .progress import ProgressState
from .rawnode import PeerStatus, RawNode, Ready, Status
from .storage import CompactedError, MemoryStorage, Storage, UnavailableError

__all__ = [
    "CAMPAIGN_TRANSFER",
    "NONE",
    "CompactedError",
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Config",
    "ConfigError",
    "DroppedError",
    "Entry",
    "EntryType",
    "HardState",
    "MemoryStorage",
    "Message",
    "MessageType",
    "PeerStatus",
    "ProgressState",
    "RandomSource",
    "RawNode",
    "ReadOnlyOption",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "SoftState",
    "Status",
    "Storage",
    "TestingKnobs",
    "UnavailableError",
    "bootstrap_log",
]
