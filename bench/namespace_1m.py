"""Benchmark: a master holding a namespace of 1,000,000 files.

1. Builds the namespace in-process (1,000 directories x 1,000 files) through the
   replicated state machine, and measures the memory it takes.
2. Times a snapshot (encoding it, and writing it durably into a journal).
3. Makes that journal a single master's directory and times a real restart:
   from `quorumfs master` starting to its first linearizable read, and reads the
   process's RSS once it serves.

    .venv/bin/python bench/namespace_1m.py [--files 1000000] [--dir DIR]

Targets: <= 1 KiB of master RSS per file; restart <= 20 s.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from quorumfs.master.commands import Create, Mkdir, encode_command
from quorumfs.master.server import admin_token_for
from quorumfs.master.state_machine import MasterStateMachine, MemberAddresses
from quorumfs.raft import ConfChange, ConfChangeType, ConfState, bootstrap_log
from quorumfs.runtime.wal import DiskStorage

PORT = 29433
SECRET = "benchmark-secret-0123456789abcdef"


def rss_bytes(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def build(files: int) -> MasterStateMachine:
    state = MasterStateMachine()
    per_dir = 1000
    index = 0
    now = time.time_ns()
    for d in range(max(1, files // per_dir)):
        index += 1
        state.apply(index, encode_command(Mkdir(path=f"/d{d:04d}", mtime=now, owner="bench")))
        for f in range(min(per_dir, files - d * per_dir)):
            index += 1
            command = Create(path=f"/d{d:04d}/file-{f:04d}", mtime=now, owner="bench")
            state.apply(index, encode_command(command))
    return state


def wait_read(address: str, path: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{address}/v1/fs/stat?path={path}", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit("the restarted master did not serve a read in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()

    before = rss_bytes()
    started = time.perf_counter()
    state = build(args.files)
    built = time.perf_counter() - started
    in_process = rss_bytes() - before
    print(
        f"built {args.files:,} files in {built:.1f} s; "
        f"in-process RSS {in_process / args.files:.0f} B/file"
    )

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        mdir = Path(tmp) / "m"
        mdir.mkdir()
        address = f"127.0.0.1:{PORT}"
        context = MemberAddresses(http=address, raft=f"127.0.0.1:{PORT + 10000}").encode()
        entries, hard_state = bootstrap_log([1], {1: context})
        storage = DiskStorage.open(mdir / "journal")
        storage.save(hard_state, entries)
        storage.sync()
        # The image carries the membership too, as a real master's snapshot does.
        state.apply_membership(1, ConfChange(ConfChangeType.ADD_VOTER, 1, context), ConfState())
        started = time.perf_counter()
        image = state.snapshot()
        encoded = time.perf_counter() - started
        storage.create_snapshot(1, ConfState(voters=frozenset({1})), image)
        written = time.perf_counter() - started
        storage.close()
        print(
            f"snapshot: {len(image) / 1e6:.1f} MB, encoded in {encoded:.2f} s, "
            f"durable in {written:.2f} s"
        )
        (mdir / "identity.json").write_text(
            json.dumps({"node_id": 1, "http": address, "raft": f"127.0.0.1:{PORT + 10000}"})
        )
        (mdir / "cluster.secret").write_text(SECRET)
        (mdir / "admin.token").write_text(admin_token_for(SECRET.encode()))
        del state, image

        started = time.monotonic()
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "quorumfs",
                "master",
                "--mdir",
                str(mdir),
                "--port",
                str(PORT),
                "--log-level",
                "WARNING",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_read(address, "/d0000/file-0000", started + 120)
            restart = time.monotonic() - started
            rss = rss_bytes(process.pid)
            print(
                f"restart to first linearizable read: {restart:.1f} s; "
                f"master RSS {rss / 1e6:.0f} MB = {rss / args.files:.0f} B/file"
            )
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
