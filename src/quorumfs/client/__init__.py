"""The Python client of quorumfs: the masters' namespace API and file bytes, async first,
plus a sync facade.

Owns how a program talks to a group of masters as if it were one server: find
the leader (from a list of masters, one DNS name whose A/AAAA records are the
masters, or any ``MasterSource``), follow redirects,
ride through a leader change with retries bounded by a deadline, never repeat a
write that is not safe to repeat, and raise one typed exception per outcome
(``errors``). It also moves file content to and from the volume servers
(``put``, ``get``, ``read``, ``append``, ``write_at``, ``truncate``; see
``_files``). What each endpoint does is the masters' and volume servers'
business (``quorumfs.master.http_api`` and its ``openapi.json``, ``quorumfs.wire``).

::

    from pathlib import Path

    from quorumfs.client import MasterClient, NotFound

    with MasterClient("127.0.0.1:9333,127.0.0.1:9334,127.0.0.1:9335") as fs:
        fs.mkdir("/data/raw", parents=True)
        fs.create("/data/raw/a.csv")
        try:
            fs.stat("/data/missing")
        except NotFound:  # also a FileNotFoundError
            ...
        fs.put("/data/raw/b.csv", Path("b.csv"))
        head = fs.read("/data/raw/b.csv", 0, 100)

``AsyncMasterClient`` has the same methods as coroutines (``async with``).
"""

from quorumfs.master.contract import ClusterStatus
from quorumfs.master.http_api import DeleteResponse, RenameResponse
from quorumfs.master.results import DirEntry, Kind, Stat, Totals

from ._async import AsyncMasterClient, MasterInfo, RetryPolicy
from ._dns import (
    DEFAULT_REFRESH,
    DNS_SERVER_ENV,
    DnsMasters,
    Nameserver,
    dns_name_of,
    master_source,
    parse_nameserver,
)
from ._files import Progress, Sink, Source, TransferPolicy
from ._sources import MasterSource, StaticMasters, parse_address, parse_masters
from ._sync import MasterClient
from .errors import (
    AlreadyExists,
    Conflict,
    DataUnavailable,
    DirectoryNotEmpty,
    FileChanged,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NotADirectory,
    NotFound,
    OutcomeUnknown,
    PermissionDenied,
    ProtocolError,
    QuorumfsError,
    Unavailable,
    WriteFailed,
)

__all__ = [
    "DEFAULT_REFRESH",
    "DNS_SERVER_ENV",
    "AlreadyExists",
    "AsyncMasterClient",
    "ClusterStatus",
    "Conflict",
    "DataUnavailable",
    "DeleteResponse",
    "DirEntry",
    "DirectoryNotEmpty",
    "DnsMasters",
    "FileChanged",
    "InvalidArgument",
    "IsADirectory",
    "Kind",
    "MasterClient",
    "MasterInfo",
    "MasterSource",
    "NameTooLong",
    "Nameserver",
    "NotADirectory",
    "NotFound",
    "OutcomeUnknown",
    "PermissionDenied",
    "Progress",
    "ProtocolError",
    "QuorumfsError",
    "RenameResponse",
    "RetryPolicy",
    "Sink",
    "Source",
    "Stat",
    "StaticMasters",
    "Totals",
    "TransferPolicy",
    "Unavailable",
    "WriteFailed",
    "dns_name_of",
    "master_source",
    "parse_address",
    "parse_masters",
    "parse_nameserver",
]
