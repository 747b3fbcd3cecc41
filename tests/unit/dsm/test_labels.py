"""Namespace-label functions 4 (size), 5 (read), 6 (write) and the file-backed label store."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from construct import Int32ul

from acpi.dsm_buffer import MAX_INPUT, MAX_PAYLOAD
from pmemd.config import Config, from_mapping
from pmemd.daemon.label_file import FileLabelStore, JournalHeader, journal_path, open_label_stores
from pmemd.dsm.build import build_dispatcher
from pmemd.dsm.call import Status
from pmemd.dsm.devices import slot_to_handle
from pmemd.dsm.dispatcher import Dispatcher
from pmemd.dsm.label_store import LabelStore, MemoryLabelStore
from pmemd.dsm.labels import MAX_LABEL_TRANSFER
from pmemd.dsm.page import decode_reply, encode_request
from tests.harness.files import immutable

MiB = 1 << 20
LABEL_SIZE = 128 * 1024
PMEM_SIZE = 2 * MiB
DIMM = slot_to_handle(0)


def config(backing: Path = Path("/nonexistent/nv0.img"), label_size: int = LABEL_SIZE) -> Config:
    return from_mapping(
        {"domid": 1, "nvdimm": [{"backing": str(backing), "size": PMEM_SIZE + label_size, "label_size": label_size}]}
    )


def dispatcher_with(store: LabelStore | None) -> Dispatcher:
    return build_dispatcher(config(), {} if store is None else {0: store}).dispatcher


def label_range(offset: int, length: int) -> bytes:
    return Int32ul.build(offset) + Int32ul.build(length)


def run(dispatcher: Dispatcher, function: int, data: bytes = b"", revision: int = 1) -> tuple[int, bytes]:
    """(status, output) of one call to DIMM slot 0."""
    payload = decode_reply(dispatcher.dispatch(encode_request(DIMM, revision, function, data)))
    return Int32ul.parse(payload[:4]), payload[4:]


def read(dispatcher: Dispatcher, offset: int, length: int) -> tuple[int, bytes]:
    return run(dispatcher, 5, label_range(offset, length))


def write(dispatcher: Dispatcher, offset: int, data: bytes) -> int:
    return run(dispatcher, 6, label_range(offset, len(data)) + data)[0]


def pattern(length: int, seed: int = 1) -> bytes:
    return bytes((seed + i * 7) & 0xFF for i in range(length))


@pytest.fixture
def memory_store() -> MemoryLabelStore:
    return MemoryLabelStore(LABEL_SIZE, fill=0xEE)


@pytest.fixture
def dispatcher(memory_store: MemoryLabelStore) -> Dispatcher:
    return dispatcher_with(memory_store)


# Max transfer.


def test_max_transfer_is_what_one_read_reply_and_one_write_request_both_carry() -> None:
    assert MAX_LABEL_TRANSFER == min(MAX_PAYLOAD - 4, MAX_INPUT - 8) == 4072


# Fn 4: get label size.


def test_get_label_size_reports_area_size_and_max_transfer(dispatcher: Dispatcher) -> None:
    assert run(dispatcher, 4) == (Status.SUCCESS, Int32ul.build(LABEL_SIZE) + Int32ul.build(MAX_LABEL_TRANSFER))


def test_get_label_size_with_input_is_rejected(dispatcher: Dispatcher) -> None:
    assert run(dispatcher, 4, b"\0\0\0\0") == (Status.INVALID_INPUT, b"")


# Fn 5: read.


def test_label_read_returns_exactly_length_bytes(dispatcher: Dispatcher) -> None:
    assert read(dispatcher, 100, 300) == (Status.SUCCESS, b"\xee" * 300)


def test_label_read_of_zero_bytes_succeeds(dispatcher: Dispatcher) -> None:
    assert read(dispatcher, LABEL_SIZE, 0) == (Status.SUCCESS, b"")


def test_label_read_of_max_transfer_succeeds(dispatcher: Dispatcher) -> None:
    assert read(dispatcher, 0, MAX_LABEL_TRANSFER) == (Status.SUCCESS, b"\xee" * MAX_LABEL_TRANSFER)


def test_label_read_ending_at_area_end_succeeds(dispatcher: Dispatcher) -> None:
    assert read(dispatcher, LABEL_SIZE - 16, 16) == (Status.SUCCESS, b"\xee" * 16)


def test_label_read_past_area_is_rejected(dispatcher: Dispatcher) -> None:
    assert read(dispatcher, LABEL_SIZE - 16, 17) == (Status.INVALID_INPUT, b"")


def test_label_read_starting_past_area_is_rejected(dispatcher: Dispatcher) -> None:
    assert read(dispatcher, LABEL_SIZE + 1, 0) == (Status.INVALID_INPUT, b"")


def test_label_read_overflowing_32_bits_is_rejected(dispatcher: Dispatcher) -> None:
    assert read(dispatcher, 0xFFFFFFF0, 0x20) == (Status.INVALID_INPUT, b"")


def test_label_read_over_max_transfer_is_rejected(dispatcher: Dispatcher) -> None:
    assert read(dispatcher, 0, MAX_LABEL_TRANSFER + 1) == (Status.INVALID_INPUT, b"")


def test_label_read_with_short_input_is_rejected(dispatcher: Dispatcher) -> None:
    assert run(dispatcher, 5, label_range(0, 8)[:7]) == (Status.INVALID_INPUT, b"")


def test_label_read_with_trailing_input_is_rejected(dispatcher: Dispatcher) -> None:
    assert run(dispatcher, 5, label_range(0, 8) + b"\0") == (Status.INVALID_INPUT, b"")


def test_label_read_with_wrong_revision_is_not_supported(dispatcher: Dispatcher) -> None:
    assert run(dispatcher, 5, label_range(0, 8), revision=2) == (Status.NOT_SUPPORTED, b"")


# Fn 6: write.


def test_label_write_then_read_round_trips(dispatcher: Dispatcher) -> None:
    assert write(dispatcher, 256, pattern(1000)) == Status.SUCCESS
    assert read(dispatcher, 256, 1000) == (Status.SUCCESS, pattern(1000))


def test_label_write_of_max_transfer_succeeds(dispatcher: Dispatcher) -> None:
    assert write(dispatcher, LABEL_SIZE - MAX_LABEL_TRANSFER, pattern(MAX_LABEL_TRANSFER)) == Status.SUCCESS


def test_label_write_of_zero_bytes_succeeds(dispatcher: Dispatcher) -> None:
    assert write(dispatcher, LABEL_SIZE, b"") == Status.SUCCESS


def test_label_write_past_area_is_rejected(dispatcher: Dispatcher, memory_store: MemoryLabelStore) -> None:
    assert write(dispatcher, LABEL_SIZE - 8, pattern(9)) == Status.INVALID_INPUT
    assert memory_store.read(LABEL_SIZE - 8, 8) == b"\xee" * 8


def test_label_write_overflowing_32_bits_is_rejected(dispatcher: Dispatcher) -> None:
    assert write(dispatcher, 0xFFFFFFFF, pattern(2)) == Status.INVALID_INPUT


def test_label_write_over_max_transfer_is_rejected(dispatcher: Dispatcher, memory_store: MemoryLabelStore) -> None:
    """A request cannot even carry more: the length word alone must be refused."""
    request = label_range(0, MAX_LABEL_TRANSFER + 1) + pattern(MAX_LABEL_TRANSFER)
    assert run(dispatcher, 6, request) == (Status.INVALID_INPUT, b"")
    assert memory_store.read(0, 8) == b"\xee" * 8


def test_label_write_with_less_data_than_length_is_rejected(dispatcher: Dispatcher) -> None:
    assert run(dispatcher, 6, label_range(0, 16) + pattern(15)) == (Status.INVALID_INPUT, b"")


def test_label_write_with_more_data_than_length_is_rejected(dispatcher: Dispatcher) -> None:
    assert run(dispatcher, 6, label_range(0, 16) + pattern(17)) == (Status.INVALID_INPUT, b"")


def test_label_write_with_short_input_is_rejected(dispatcher: Dispatcher) -> None:
    assert run(dispatcher, 6, b"\0" * 7) == (Status.INVALID_INPUT, b"")


def test_label_write_to_read_only_area_is_not_supported() -> None:
    dispatcher = dispatcher_with(MemoryLabelStore(LABEL_SIZE, writable=False))
    assert write(dispatcher, 0, pattern(8)) == Status.NOT_SUPPORTED


def test_label_write_is_acknowledged_only_after_the_store_returns() -> None:
    events: list[str] = []

    class RecordingStore(MemoryLabelStore):
        def write(self, offset: int, data: bytes) -> None:
            events.append("store write")
            super().write(offset, data)
            events.append("store durable")

    dispatcher = dispatcher_with(RecordingStore(LABEL_SIZE))
    status = write(dispatcher, 0, pattern(8))
    events.append(f"status {status}")
    assert events == ["store write", "store durable", "status 0"]


# No label area.


def test_dimm_without_label_area_does_not_advertise_label_functions() -> None:
    payload = decode_reply(dispatcher_with(None).dispatch(encode_request(DIMM, 1, 0)))
    assert Int32ul.parse(payload) & 0x70 == 0


@pytest.mark.parametrize("function, data", [(4, b""), (5, label_range(0, 8)), (6, label_range(0, 1) + b"x")])
def test_label_functions_without_label_area_are_not_supported(function: int, data: bytes) -> None:
    assert run(dispatcher_with(None), function, data) == (Status.NOT_SUPPORTED, b"")


# Store failures.


def test_label_store_failure_is_a_hardware_error() -> None:
    class FailingStore(MemoryLabelStore):
        def read(self, offset: int, length: int) -> bytes:
            raise OSError(5, "Input/output error")

    with structlog.testing.capture_logs() as logs:
        assert read(dispatcher_with(FailingStore(LABEL_SIZE)), 0, 8) == (Status.HARDWARE_ERROR, b"")
    assert [e["event"] for e in logs] == ["dsm handler failed"]


def test_label_store_returning_short_data_is_a_hardware_error() -> None:
    class ShortStore(MemoryLabelStore):
        def read(self, offset: int, length: int) -> bytes:
            return super().read(offset, length)[:-1]

    with structlog.testing.capture_logs():
        assert read(dispatcher_with(ShortStore(LABEL_SIZE)), 0, 8) == (Status.HARDWARE_ERROR, b"")


# FileLabelStore against real files.


def make_backing(path: Path, label_size: int = LABEL_SIZE) -> Path:
    """A backing file whose PMEM part is 0xAA and label area 0x00."""
    path.write_bytes(b"\xaa" * PMEM_SIZE + bytes(label_size))
    return path


@pytest.fixture
def backing(tmp_path: Path) -> Path:
    return make_backing(tmp_path / "nv0.img")


@pytest.fixture
def file_dispatcher(backing: Path) -> Iterator[Dispatcher]:
    cfg = config(backing)
    with contextlib.ExitStack() as stack:
        yield build_dispatcher(cfg, open_label_stores(cfg, stack)).dispatcher


def test_file_labels_are_the_last_label_size_bytes_of_the_backing(file_dispatcher: Dispatcher, backing: Path) -> None:
    assert write(file_dispatcher, 0, b"first") == Status.SUCCESS
    assert write(file_dispatcher, LABEL_SIZE - 4, b"last") == Status.SUCCESS
    content = backing.read_bytes()
    assert content[PMEM_SIZE : PMEM_SIZE + 5] == b"first"
    assert content[-4:] == b"last"
    assert content[:PMEM_SIZE] == b"\xaa" * PMEM_SIZE


def test_file_label_write_then_read_round_trips(file_dispatcher: Dispatcher) -> None:
    assert write(file_dispatcher, 4000, pattern(MAX_LABEL_TRANSFER)) == Status.SUCCESS
    assert read(file_dispatcher, 4000, MAX_LABEL_TRANSFER) == (Status.SUCCESS, pattern(MAX_LABEL_TRANSFER))


def test_file_labels_survive_reopening(backing: Path) -> None:
    with FileLabelStore(backing, PMEM_SIZE, LABEL_SIZE) as store:
        store.write(512, pattern(256))
    with FileLabelStore(backing, PMEM_SIZE, LABEL_SIZE) as store:
        assert store.read(512, 256) == pattern(256)


def test_file_store_reports_the_configured_area_size(backing: Path) -> None:
    with FileLabelStore.for_nvdimm(config(backing).nvdimms[0]) as store:
        assert (store.size, store.writable) == (LABEL_SIZE, True)


def test_file_store_rejects_a_backing_shorter_than_its_label_area(tmp_path: Path) -> None:
    short = tmp_path / "short.img"
    short.write_bytes(bytes(PMEM_SIZE + LABEL_SIZE - 1))
    with pytest.raises(ValueError, match="too short"):
        FileLabelStore(short, PMEM_SIZE, LABEL_SIZE)


def test_file_label_write_syncs_journal_then_data_before_returning(
    backing: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Observed with a spy on fdatasync: what each file holds at each sync."""
    synced: list[tuple[str, bytes]] = []
    real_fdatasync = os.fdatasync

    def spy(fd: int) -> None:
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        view = os.pread(fd, 8, 0) if name.endswith(".labels-journal") else os.pread(fd, 4, PMEM_SIZE + 64)
        synced.append((name, view))
        real_fdatasync(fd)

    with FileLabelStore(backing, PMEM_SIZE, LABEL_SIZE) as store:
        monkeypatch.setattr(os, "fdatasync", spy)
        store.write(64, b"new!")
        monkeypatch.undo()
    journal_after = journal_path(backing).read_bytes()[:8]

    assert synced == [("nv0.img.labels-journal", b"PMEMDLJ\0"), ("nv0.img", b"new!")]
    assert journal_after == bytes(8)


def test_read_only_backing_file_answers_label_writes_not_supported(backing: Path) -> None:
    with read_only(backing):
        cfg = config(backing)
        with contextlib.ExitStack() as stack:
            dispatcher = build_dispatcher(cfg, open_label_stores(cfg, stack)).dispatcher
            assert write(dispatcher, 0, pattern(8)) == Status.NOT_SUPPORTED
            assert read(dispatcher, 0, 8) == (Status.SUCCESS, bytes(8))


def test_read_only_backing_file_still_advertises_label_functions(backing: Path) -> None:
    with read_only(backing), FileLabelStore(backing, PMEM_SIZE, LABEL_SIZE) as store:
        payload = decode_reply(dispatcher_with(store).dispatch(encode_request(DIMM, 1, 0)))
        assert Int32ul.parse(payload) & 0x71 == 0x71


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make `path` unwritable for this process: mode 0444, plus the immutable flag as root."""
    path.chmod(0o444)
    try:
        if os.access(path, os.W_OK):  # root ignores the mode
            with immutable(path):
                yield
        else:
            yield
    finally:
        path.chmod(0o644)


def test_journal_header_is_self_describing() -> None:
    """Magic, version, length, area geometry, offset and a digest: 56 bytes."""
    assert JournalHeader.sizeof() == 8 + 4 + 4 + 8 + 8 + 8 + 16
