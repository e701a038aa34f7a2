"""Snapshots of a partition's fold: a restored fold decides exactly as one folded from the start."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dispatcher import core
from dispatcher.codecs import Codec
from dispatcher.demo import policy_update
from dispatcher.worker import snapshots
from dispatcher.worker.fold import PartitionFold
from dispatcher.worker.snapshots import Snapshots
from tests.unit.test_policy_whatif import recorded_run

CODEC = Codec()
TOPIC = "input-sequence"


def fold_through(fold: PartitionFold, records: list[tuple[int, bytes]]) -> list[core.Decision]:
    out: list[core.Decision] = []
    for offset, value in records:
        out += fold.apply(value, offset)
    return out


@pytest.fixture(scope="module")
def records() -> list[tuple[int, bytes]]:
    return recorded_run(policy_update(1), steps=40)


def test_a_fold_restored_from_a_snapshot_decides_as_the_fold_from_the_start(
    tmp_path: Path, records: list[tuple[int, bytes]]
) -> None:
    cut = len(records) // 2
    whole = PartitionFold(TOPIC, 0, CODEC)
    fold_through(whole, records[:cut])
    snaps = Snapshots(tmp_path, TOPIC, every=cut)
    assert snaps.maybe_write(whole)  # written by a forked child
    snaps.wait()
    (written,) = (tmp_path / f"{TOPIC}-0").glob("*.snap")
    assert written.name == f"{cut:020d}.snap"
    later = fold_through(whole, records[cut:])  # the parent went on meanwhile

    restored = Snapshots(tmp_path, TOPIC, every=cut).load(0, len(records), CODEC)
    assert restored is not None
    assert restored.fold.next_offset == cut
    # It names the record before its offset, so a worker can tell its log from another.
    assert restored.last == snapshots.record_digest(records[cut - 1][1])
    assert restored.last != snapshots.record_digest(records[cut][1])
    again = fold_through(restored.fold, records[cut:])
    assert len(later) > 50
    assert again == later
    assert [repr(d) for d in again] == [repr(d) for d in later]
    assert restored.fold.counts == whole.counts  # (the read model's counters)
    assert restored.fold.versions == whole.versions != {}  # (a version taken stays taken)


def test_a_snapshot_past_the_offset_wanted_is_not_used(
    tmp_path: Path, records: list[tuple[int, bytes]]
) -> None:
    fold = PartitionFold(TOPIC, 0, CODEC)
    snaps = Snapshots(tmp_path, TOPIC, every=100)
    fold_through(fold, records[:99])
    assert not snaps.maybe_write(fold)  # not due yet
    fold_through(fold, records[99:100])
    assert snaps.maybe_write(fold)
    snaps.wait()
    assert snaps.load(0, 99, CODEC) is None
    restored = snaps.load(0, 100, CODEC)
    assert restored is not None
    assert restored.fold.next_offset == 100


def test_damaged_or_foreign_snapshots_are_passed_over_for_older_ones(
    tmp_path: Path, records: list[tuple[int, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    fold = PartitionFold(TOPIC, 0, CODEC)
    snaps = Snapshots(tmp_path, TOPIC, every=50, keep=3)
    for end in (50, 100, 150, 200):
        fold_through(fold, records[end - 50 : end])
        assert snaps.maybe_write(fold)
        snaps.wait()
    kept = sorted((tmp_path / f"{TOPIC}-0").glob("*.snap"))
    assert [p.name for p in kept] == [f"{n:020d}.snap" for n in (100, 150, 200)]
    newest = bytearray(kept[-1].read_bytes())
    newest[-10] ^= 0xFF
    kept[-1].write_bytes(bytes(newest))
    restored = snaps.load(0, 10_000, CODEC)
    assert restored is not None
    assert restored.fold.next_offset == 150  # the damaged one was skipped
    monkeypatch.setattr(snapshots, "FINGERPRINT", b"\0" * 32)  # as if the code had changed
    assert snaps.load(0, 10_000, CODEC) is None


def test_a_snapshot_that_cannot_be_written_leaves_the_worker_going(
    tmp_path: Path, records: list[tuple[int, bytes]]
) -> None:
    (tmp_path / "snaps").write_text("a file where the directory should be")
    fold = PartitionFold(TOPIC, 0, CODEC)
    fold_through(fold, records[:10])
    snaps = Snapshots(tmp_path / "snaps", TOPIC, every=10)
    assert not snaps.maybe_write(fold)  # logged, not raised
    assert snaps.load(0, 10, CODEC) is None


def test_a_writer_that_hangs_is_killed_and_snapshots_go_on(
    tmp_path: Path, records: list[tuple[int, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def hang(*_: object) -> None:  # (in the forked child)
        time.sleep(60)

    fold = PartitionFold(TOPIC, 0, CODEC)
    fold_through(fold, records[:10])
    snaps = Snapshots(tmp_path, TOPIC, every=10)
    monkeypatch.setattr(snapshots, "_write", hang)
    monkeypatch.setattr(snapshots, "WRITE_TIMEOUT_S", 0.5)
    assert snaps.maybe_write(fold)
    hung = snaps._child
    assert hung is not None
    assert snaps.busy()
    time.sleep(0.6)
    assert not snaps.busy()  # killed (before, busy for ever: no snapshot again)
    monkeypatch.undo()
    fold_through(fold, records[10:20])
    assert snaps.maybe_write(fold)
    snaps.wait()
    restored = snaps.load(0, 20, CODEC)
    assert restored is not None
    assert restored.fold.next_offset == 20
    for _ in range(100):  # the killed one is reaped, not left a zombie
        if not snaps.busy() and not snaps._killed:
            break
        time.sleep(0.01)
    assert not snaps._killed
    with pytest.raises(ChildProcessError):
        os.waitpid(hung, os.WNOHANG)
