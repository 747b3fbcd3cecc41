"""A label write interrupted by a crash is, after restart, entirely old or entirely new.

First crashes injected at every step of the write protocol (deterministic), then a real
kill -9 loop against a child process writing label chunks through `FileLabelStore`.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import structlog
from construct import Int32ul

from pmemd.daemon.label_file import FileLabelStore, LabelStoreFailed, journal_path
from pmemd.dsm.labels import MAX_LABEL_TRANSFER
from tests.harness.paths import REPO

MiB = 1 << 20
PMEM_SIZE = 2 * MiB
LABEL_SIZE = 128 * 1024
CHUNK = MAX_LABEL_TRANSFER  # not a page multiple: chunks straddle page boundaries
CHUNKS = 8


def chunk_offset(index: int) -> int:
    return index * CHUNK


def chunk_of(generation: int) -> bytes:
    """A chunk's content: its generation number in every word, so a mix is visible."""
    return Int32ul.build(generation) * (CHUNK // 4)


def generations_in(data: bytes) -> set[int]:
    return {Int32ul.parse(data[i : i + 4]) for i in range(0, len(data), 4)}


@pytest.fixture
def backing(tmp_path: Path) -> Path:
    path = tmp_path / "nv0.img"
    path.write_bytes(bytes(PMEM_SIZE))
    with open(path, "ab") as f:
        f.write(chunk_of(0) * CHUNKS)
        f.write(bytes(LABEL_SIZE - CHUNKS * CHUNK))
    return path


def open_store(backing: Path) -> FileLabelStore:
    return FileLabelStore(backing, PMEM_SIZE, LABEL_SIZE)


def chunk_after_restart(backing: Path, index: int = 0) -> tuple[set[int], bool]:
    """(generations found in chunk `index`, whether opening replayed the journal)."""
    with structlog.testing.capture_logs(), open_store(backing) as store:
        return generations_in(store.read(chunk_offset(index), CHUNK)), store.recovered


# Deterministic crashes: a fault injected into the Nth write-path syscall.


class SimulatedCrash(BaseException):
    """Stands for the process dying: nothing after it runs."""


def crash_at(monkeypatch: pytest.MonkeyPatch, step: int, *, torn: bool) -> None:
    """Die at the `step`-th pwrite/fdatasync; `torn` makes a pwrite land half its bytes first."""
    calls = 0
    real_pwrite, real_fdatasync = os.pwrite, os.fdatasync

    def count() -> bool:
        nonlocal calls
        calls += 1
        return calls == step

    def pwrite(fd: int, data: bytes, position: int) -> int:
        if count():
            if torn:
                real_pwrite(fd, bytes(data)[: len(data) // 2], position)
            raise SimulatedCrash
        return real_pwrite(fd, data, position)

    def fdatasync(fd: int) -> None:
        if count():
            raise SimulatedCrash
        real_fdatasync(fd)

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "fdatasync", fdatasync)


def crashed_write(backing: Path, monkeypatch: pytest.MonkeyPatch, step: int, *, torn: bool = False) -> None:
    """Write generation 1 over chunk 0 and die at `step`; the process's files are closed."""
    store = open_store(backing)
    crash_at(monkeypatch, step, torn=torn)
    with pytest.raises(SimulatedCrash):
        store.write(chunk_offset(0), chunk_of(1))
    monkeypatch.undo()
    store.close()


# Steps of one write: 1 journal pwrite, 2 journal sync, 3 in-place pwrite, 4 data sync, 5 clear.
@pytest.mark.parametrize(
    "step, torn, expected",
    [
        (1, False, {0}),  # nothing written yet
        (1, True, {0}),  # torn journal record: ignored
        (2, False, {1}),  # record complete in the page cache: replayed
        (3, False, {1}),  # record synced, in-place write not started: replayed
        (3, True, {1}),  # in-place write torn: completed by the replay
        (4, False, {1}),
        (5, False, {1}),  # data in place, record not yet cleared: replay is idempotent
        (5, True, {1}),
    ],
)
def test_crash_at_any_step_leaves_the_chunk_old_or_new(
    backing: Path, monkeypatch: pytest.MonkeyPatch, step: int, torn: bool, expected: set[int]
) -> None:
    crashed_write(backing, monkeypatch, step, torn=torn)
    assert chunk_after_restart(backing)[0] == expected


def test_torn_in_place_write_is_completed_from_the_journal(backing: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    crashed_write(backing, monkeypatch, 3, torn=True)
    assert chunk_after_restart(backing) == ({1}, True)


def test_torn_journal_record_is_ignored(backing: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    crashed_write(backing, monkeypatch, 1, torn=True)
    assert chunk_after_restart(backing) == ({0}, False)


def test_journal_record_with_a_bad_digest_is_ignored(backing: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    crashed_write(backing, monkeypatch, 3)
    journal = bytearray(journal_path(backing).read_bytes())
    journal[-1] ^= 0xFF
    journal_path(backing).write_bytes(journal)
    assert chunk_after_restart(backing) == ({0}, False)


def test_journal_record_for_another_label_area_is_ignored(backing: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    crashed_write(backing, monkeypatch, 3)
    with structlog.testing.capture_logs() as logs:
        with FileLabelStore(backing, PMEM_SIZE + 4096, LABEL_SIZE - 4096) as store:
            assert not store.recovered
    assert [e["event"] for e in logs] == ["label journal ignored: label area changed"]


def test_replayed_journal_is_cleared(backing: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    crashed_write(backing, monkeypatch, 3, torn=True)
    chunk_after_restart(backing)
    assert chunk_after_restart(backing) == ({1}, False)


def test_completed_write_leaves_no_record_to_replay(backing: Path) -> None:
    with open_store(backing) as store:
        store.write(chunk_offset(0), chunk_of(1))
    assert chunk_after_restart(backing) == ({1}, False)


def test_failed_write_refuses_further_calls_until_reopened(backing: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_fdatasync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    with open_store(backing) as store:
        monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
        with pytest.raises(OSError):
            store.write(chunk_offset(0), chunk_of(1))
        monkeypatch.undo()
        with pytest.raises(LabelStoreFailed):
            store.read(chunk_offset(0), CHUNK)
    assert chunk_after_restart(backing) == ({1}, True)


# The real thing: SIGKILL a writer at random moments.

WRITER = """
import sys
from pmemd.daemon.label_file import FileLabelStore
from construct import Int32ul

path, start, size, chunk, chunks, generation = sys.argv[1], *map(int, sys.argv[2:])
store = FileLabelStore(path, start, size)
print("ready", flush=True)
while True:
    store.write((generation % chunks) * chunk, Int32ul.build(generation) * (chunk // 4))
    print(generation, flush=True)  # acknowledged: durable from here on
    generation += 1
"""

KILLS = 25


def spawn_writer(backing: Path, first_generation: int) -> subprocess.Popen[str]:
    argv = [str(backing), str(PMEM_SIZE), str(LABEL_SIZE), str(CHUNK), str(CHUNKS), str(first_generation)]
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, *argv], cwd=REPO, stdout=subprocess.PIPE, text=True
    )


def kill_at_random_moment(writer: subprocess.Popen[str], rng: random.Random) -> list[int]:
    """Let the writer acknowledge a few writes, SIGKILL it, return every acknowledged generation."""
    assert writer.stdout is not None
    assert writer.stdout.readline() == "ready\n"
    acknowledged = [int(writer.stdout.readline()) for _ in range(rng.randrange(0, 4))]
    for _ in range(rng.randrange(20_000)):  # vary where in the next write the signal lands
        pass
    writer.send_signal(signal.SIGKILL)
    rest, _ = writer.communicate()
    assert writer.returncode == -signal.SIGKILL
    return acknowledged + [int(line) for line in rest.split()]


def test_kill_9_during_label_writes_never_leaves_a_mixed_chunk(backing: Path) -> None:
    rng = random.Random(0x9E3779B9)
    latest = {index: 0 for index in range(CHUNKS)}  # generation each chunk must hold
    generation = 1
    for _ in range(KILLS):
        acknowledged = kill_at_random_moment(spawn_writer(backing, generation), rng)
        in_flight = max(acknowledged, default=generation - 1) + 1
        for g in acknowledged:
            latest[g % CHUNKS] = g
        with structlog.testing.capture_logs(), open_store(backing) as store:
            for index in range(CHUNKS):
                found = generations_in(store.read(chunk_offset(index), CHUNK))
                allowed = {latest[index]} | ({in_flight} if in_flight % CHUNKS == index else set())
                assert len(found) == 1, f"chunk {index} mixes generations {sorted(found)}"
                assert found <= allowed, f"chunk {index} holds {found}, expected one of {allowed}"
                latest[index] = found.pop()
        generation = in_flight + 1
