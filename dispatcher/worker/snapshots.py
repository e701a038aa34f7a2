"""Local snapshots of a partition's fold, so a restarted worker folds only what came after.

The dispatch state of a partition is the fold of its input sequence, and that
log is kept forever: without snapshots a restart refolds all of it (about
9,000 records/s here: an hour per 30 million records). Every ``every``
records the worker writes the fold (its pools, policy and next offset) to
``<dir>/<topic>-<partition>/<next offset>.snap``; taking a partition, it
starts from the newest snapshot at or below the offset it must reach and
folds the rest from the log, silently as before. A snapshot at offset N is
the state after records 0..N-1 whoever wrote it (the fold is a pure function
of the log), so it stays valid across crashes, restarts and rebalances. It
names the record before its offset (a digest): a worker restoring it checks
that record in the log, so a topic deleted and created again under the same
name (another log) is folded from its start.

Writing does not stop the worker: a forked child pickles the state from its
copy-on-write view of memory (as Redis' BGSAVE does) while the worker goes
on; one child at a time. A file is ``MAGIC``, the code fingerprint, the
sha256 of the body and the zlib-compressed pickle; it appears under its name
only once complete (written aside, then renamed). A snapshot of other code
(``FINGERPRINT``: the sources that decide, the schemas, and the versions of
Python and of the libraries that decide or decode: numpy, scipy, fastavro,
pydantic), a damaged one, or none at all means folding from further back,
never a different state. The files are the worker's own, in its state directory:
they are unpickled, so that directory must be writable by the worker alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import pickle
import signal
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dispatcher.codecs.codec import Codec
from dispatcher.codecs.schemas import SCHEMA_DIR
from dispatcher.worker.fold import PartitionFold

__all__ = ["FINGERPRINT", "Restored", "Snapshots", "record_digest"]

log = logging.getLogger("dispatcher.worker")

MAGIC = b"dispatcher-snapshot-1\n"
STALE_S = 600  # a half-written file this old has no writer left
# A writer still running after this long is stuck (a hung disk, say): it is killed, so
# that snapshots do not stop for good while the worker runs on. (Below STALE_S: what it
# left half-written is cleaned up by a later writer.)
WRITE_TIMEOUT_S = 300
_ROOT = Path(__file__).resolve().parents[1]
# What a snapshot's state depends on: the core, how records decode (the schemas give old
# records their defaults) and how they become events.
_SOURCES = (*sorted((_ROOT / "core").glob("*.py")), *sorted(SCHEMA_DIR.glob("*.avsc")),
            SCHEMA_DIR / "registry.json", _ROOT / "codecs" / "codec.py",
            _ROOT / "codecs" / "schemas.py", _ROOT / "codecs" / "adapt.py",
            _ROOT / "codecs" / "models.py", _ROOT / "worker" / "fold.py")  # fmt: skip
# (scipy solves batches, ties included; fastavro and pydantic decide what a record reads as)
_LIBRARIES = ("numpy", "scipy", "fastavro", "pydantic")


def _fingerprint() -> bytes:
    versions = "|".join(importlib.metadata.version(name) for name in _LIBRARIES)
    h = hashlib.sha256(f"{sys.version}|{versions}".encode())
    for path in _SOURCES:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.digest()


FINGERPRINT = _fingerprint()
# What a snapshot keeps of a fold, in this order, then the digest of its last record (the
# first four make the fold; the others are set on it).
_KEPT = ("topic", "partition", "next_offset", "policy", "policies", "versions", "pools",
         "dropped", "counts")  # fmt: skip


def record_digest(value: bytes) -> bytes:
    """What a snapshot keeps of the record before its offset, to know its log again."""
    return hashlib.blake2b(value, digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class Restored:
    fold: PartitionFold
    last: bytes  # ``record_digest`` of the record at ``fold.next_offset - 1`` when written


class Snapshots:
    """The snapshots of one input-sequence topic's partitions under ``root``."""

    def __init__(self, root: Path, topic: str, every: int, keep: int = 2) -> None:
        self.root, self.topic, self.every, self.keep = root, topic, every, keep
        self.base: dict[int, int] = {}  # partition -> the offset its last snapshot was at
        self._child: int | None = None  # the writer running now
        self._child_since = 0.0  # when it started (monotonic)
        self._killed: list[int] = []  # stuck writers killed, until reaped

    def _dir(self, partition: int) -> Path:
        return self.root / f"{self.topic}-{partition}"

    def maybe_write(self, fold: PartitionFold) -> bool:
        """Starts writing ``fold`` if ``every`` records were applied since its last
        snapshot and no other is being written; returns whether it started."""
        if fold.next_offset - self.base.get(fold.partition, 0) < self.every or self.busy():
            return False
        self.base[fold.partition] = fold.next_offset
        directory = self._dir(fold.partition)
        state = (*(getattr(fold, name) for name in _KEPT), record_digest(fold.last))
        try:  # a snapshot is an optimisation: failing to take one must not stop the worker
            directory.mkdir(parents=True, exist_ok=True)
            if not hasattr(os, "fork"):
                _write(directory, state, self.keep)
                return True
            pid = os.fork()
        except OSError as exc:
            log.warning("no snapshot of partition %d at %d: %s", fold.partition,
                        fold.next_offset, exc)  # fmt: skip
            return False
        if pid == 0:  # the child: write, and leave without running the parent's clean-up
            status = 1
            try:
                signal.set_wakeup_fd(-1)  # the parent's event loop must not hear our signals
                for sig in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_DFL)
                _write(directory, state, self.keep)
                status = 0
            finally:
                os._exit(status)
        self._child, self._child_since = pid, time.monotonic()
        return True

    def busy(self) -> bool:
        """Whether a snapshot is being written (reaps the writer once it is done)."""
        self._killed = [pid for pid in self._killed if not _reaped(pid)]
        if self._child is None:
            return False
        try:
            pid, status = os.waitpid(self._child, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: done
            pid, status = self._child, 0
        if pid == 0:
            if time.monotonic() - self._child_since < WRITE_TIMEOUT_S:
                return True
            log.warning("a snapshot writer ran for over %ds: killed; the next one will retry",
                        WRITE_TIMEOUT_S)  # fmt: skip
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._child, signal.SIGKILL)
            # Reaped later, never waited for: one stuck in the kernel dies only when its
            # I/O returns.
            self._killed.append(self._child)
            self._child = None
            return False
        if os.waitstatus_to_exitcode(status) != 0:
            log.warning("writing a snapshot failed (exit status %d); the next one will retry",
                        os.waitstatus_to_exitcode(status))  # fmt: skip
        self._child = None
        return False

    def wait(self) -> None:
        """Waits for the snapshot being written, if any."""
        if self._child is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._child, 0)
            self._child = None

    def load(self, partition: int, upto: int, codec: Codec) -> Restored | None:
        """The fold of ``partition`` from its newest usable snapshot at or below offset
        ``upto``, or None (fold from the start). The caller checks ``Restored.last``
        against its log."""
        for path in sorted(self._dir(partition).glob("*.snap"), reverse=True):  # newest first
            if not path.stem.isdigit() or (offset := int(path.stem)) > upto:
                continue
            state = _read(path)
            if state is None:
                continue
            kept, last = dict(zip(_KEPT, state, strict=False)), state[-1]
            at = (kept["topic"], kept["partition"], kept["next_offset"])
            if at != (self.topic, partition, offset):
                log.warning("snapshot %s is of %s-%s at %s: ignored", path, *at)
                continue
            fold = PartitionFold(self.topic, partition, codec, kept["policy"])
            for name in _KEPT[4:]:
                setattr(fold, name, kept[name])
            fold.next_offset = offset
            self.base[partition] = offset
            log.info("partition %d: starts from the snapshot at offset %d", partition, offset)
            return Restored(fold, last)
        return None


def _reaped(pid: int) -> bool:
    """Whether child ``pid`` has ended (reaping it)."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] != 0
    except ChildProcessError:
        return True


def _write(directory: Path, state: tuple[object, ...], keep: int) -> None:
    body = zlib.compress(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL), 1)
    offset = state[2]
    final = directory / f"{offset:020d}.snap"
    aside = directory / f".{offset:020d}.{os.getpid()}.tmp"
    with aside.open("wb") as f:
        f.write(MAGIC + FINGERPRINT + hashlib.sha256(body).digest())
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    aside.replace(final)
    for old in sorted(directory.glob("*.snap"), reverse=True)[keep:]:
        old.unlink(missing_ok=True)
    for stale in directory.glob(".*.tmp"):  # left by writers killed mid-way
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > STALE_S:
                stale.unlink()


def _read(path: Path) -> tuple[Any, ...] | None:
    try:
        data = path.read_bytes()
    except OSError as exc:
        log.warning("snapshot %s: unreadable (%s)", path, exc)
        return None
    head = len(MAGIC)
    if data[:head] != MAGIC or data[head : head + 32] != FINGERPRINT:
        log.info("snapshot %s: written by other code, not used", path)
        return None
    body = data[head + 64 :]
    if hashlib.sha256(body).digest() != data[head + 32 : head + 64]:
        log.warning("snapshot %s: damaged (checksum), not used", path)
        return None
    try:
        state = pickle.loads(zlib.decompress(body))  # noqa: S301 - our own file: module doc
    except Exception as exc:  # whatever it is, fold from further back
        log.warning("snapshot %s: does not load (%s), not used", path, exc)
        return None
    return state if isinstance(state, tuple) and len(state) == len(_KEPT) + 1 else None
