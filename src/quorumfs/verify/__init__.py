"""Correctness checking for histories recorded from the simulator or a real cluster.

Pure code (no I/O, no clock, no threads, no randomness): it only judges histories
that others record.

- ``quorumfs.verify.linearizability``: the linearizability checker (``check``) with
  its ``Operation``/``Model`` vocabulary and a ready ``KVModel``.
"""

from .linearizability import (
    Cas,
    CasOk,
    CheckResult,
    Get,
    GetOk,
    KVInput,
    KVModel,
    KVOutput,
    KVState,
    Model,
    Operation,
    Put,
    PutOk,
    check,
)

__all__ = [
    "Cas",
    "CasOk",
    "CheckResult",
    "Get",
    "GetOk",
    "KVInput",
    "KVModel",
    "KVOutput",
    "KVState",
    "Model",
    "Operation",
    "Put",
    "PutOk",
    "check",
]
