"""End to end through separate processes: `pmemd sim`, `pmemd domain`, `pmemd run`, `pmemd guest`.

One simulator serves the module; each guest here is its own domain with its own daemon
(`tests/harness/process_host.py`). Guest scripts go through `pmemd guest`, which replays the
generated AML's accesses, so every call below traps exactly as it would in a real guest.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from construct import Int32ul

from acpi import dsm_buffer as page
from acpi.layout import INTEL_BUS_UUID, ROOT_UUID
from pmemd.dsm.labels import MAX_LABEL_TRANSFER
from tests.harness.guest_script import run_all, run_script, script_process, script_text
from tests.harness.host import ProcessHost

KiB, MiB = 1 << 10, 1 << 20
LABEL_SIZE = 128 * KiB
LABELLED = {"size": 2 * MiB + LABEL_SIZE, "label_size": LABEL_SIZE, "slot": 0}
UNLABELLED = {"size": 2 * MiB, "slot": 1}
DSM_PAGE = 0xFBFFF000  # the mmio default: just below the platform pages

STATUS_OK, NOT_SUPPORTED, NO_SUCH_DEVICE, INVALID_INPUT = 0, 1, 2, 3
LABEL_FUNCTIONS = {4, 5, 6}
SMART_REVISION_2_MASK = 1 << 0 | 1 << 17 | 1 << 18


def u32(*values: int) -> str:
    return b"".join(Int32ul.build(v) for v in values).hex()


def label_write(offset: int, data: bytes, *, dimm: int = 0, vcpu: int = 0) -> dict[str, Any]:
    return {"dimm": dimm, "function": 6, "arg3": u32(offset, len(data)) + data.hex(), "vcpu": vcpu}


def label_read(offset: int, length: int, *, dimm: int = 0, vcpu: int = 0) -> dict[str, Any]:
    return {"dimm": dimm, "function": 5, "arg3": u32(offset, length), "vcpu": vcpu}


def payload(result: dict[str, Any]) -> bytes:
    """A successful call's output after its status word."""
    assert result.get("status") == STATUS_OK, result
    return bytes.fromhex(result["out"])[4:]


def mask(result: dict[str, Any]) -> set[int]:
    value = int.from_bytes(bytes.fromhex(result["out"]), "little")
    return {bit for bit in range(32) if value >> bit & 1}


def planned_ioreqs(call: dict[str, Any], result: dict[str, Any]) -> int:
    """The traps `acpi.dsm_buffer` plans for this call in mmio mode: request side + reply side."""
    input_length = len(bytes.fromhex(call.get("arg3", "")))
    reply_length = page.REPLY_PAYLOAD_OFFSET + len(bytes.fromhex(result["out"]))
    return len(list(page.request_accesses(input_length))) + len(list(page.reply_accesses(reply_length)))


@pytest.fixture(scope="module")
def mmio_guest(process_host: ProcessHost) -> Path:
    """Domain 1: 8 vCPUs, mmio mode, a labelled DIMM in slot 0 and an unlabelled one in slot 1."""
    config = process_host.guest_config(1, mode="mmio", vcpus=8, nvdimms=[LABELLED, UNLABELLED])
    process_host.start_guest(config)
    return config


@pytest.fixture(scope="module")
def ram_guest(process_host: ProcessHost) -> Path:
    config = process_host.guest_config(2, mode="ram", nvdimms=[LABELLED])
    process_host.start_guest(config)
    return config


# -- labels across a daemon restart -------------------------------------------------------


def test_label_write_survives_a_daemon_restart(process_host: ProcessHost) -> None:
    config = process_host.guest_config(3, nvdimms=[LABELLED])
    daemon = process_host.start_guest(config)
    block = bytes(range(256)) * 4
    written = run_script(config, [label_write(0x1000, block)])
    assert written.results[0]["status"] == STATUS_OK
    assert daemon.stop(signal.SIGTERM) == 0
    process_host.start_daemon(config)
    read = run_script(config, [label_read(0x1000, len(block))])
    assert payload(read.results[0]) == block


def test_mmio_label_round_trip_traps_exactly_the_access_plan(process_host: ProcessHost, mmio_guest: Path) -> None:
    block = bytes(range(7, 7 + 200))
    calls = [label_write(0x300, block), label_read(0x300, len(block)), {"dimm": 0, "function": 4}]
    run = run_script(mmio_guest, calls)
    assert payload(run.results[1]) == block
    assert [r["ioreqs"] for r in run.results] == [planned_ioreqs(c, r) for c, r in zip(calls, run.results)]


def test_ram_mode_label_round_trip_traps_only_the_notify(process_host: ProcessHost, ram_guest: Path) -> None:
    block = bytes(range(256)) * 15 + bytes(range(232))  # 4072 bytes: one maximal transfer
    assert len(block) == MAX_LABEL_TRANSFER
    calls = [label_write(0, block), label_read(0, len(block)), {"dimm": 0, "function": 0}, {"dimm": None, "function": 0}]
    run = run_script(ram_guest, calls)
    assert payload(run.results[1]) == block
    assert [r["ioreqs"] for r in run.results] == [1, 1, 1, 1]


# -- every bad input, with its exact status; the daemon keeps serving after each -----------

PROBE = {"dimm": 0, "function": 4}  # label size: answered only while the daemon serves

BAD_CALLS: dict[str, tuple[dict[str, Any], int]] = {
    "wrong handle": ({"dimm": 9, "function": 4}, NO_SUCH_DEVICE),
    "unknown function": ({"dimm": 0, "function": 31}, NOT_SUPPORTED),
    "unknown root function": ({"dimm": None, "function": 30}, NOT_SUPPORTED),
    "wrong revision": ({"dimm": 0, "function": 4, "revision": 2}, NOT_SUPPORTED),
    "read past the label area": (label_read(LABEL_SIZE - 16, 32), INVALID_INPUT),
    "read wrapping 32 bits": (label_read(0xFFFFFFF0, 0x20), INVALID_INPUT),
    "read over the max transfer": (label_read(0, MAX_LABEL_TRANSFER + 1), INVALID_INPUT),
    "write past the label area": (label_write(LABEL_SIZE - 8, bytes(16)), INVALID_INPUT),
    "write wrapping 32 bits": ({"dimm": 0, "function": 6, "arg3": u32(0xFFFFFFFC, 8) + "00" * 8}, INVALID_INPUT),
    "write over the max transfer": (
        {"dimm": 0, "function": 6, "arg3": u32(0, MAX_LABEL_TRANSFER + 1) + "00" * MAX_LABEL_TRANSFER},
        INVALID_INPUT,
    ),
    "write shorter than its length": ({"dimm": 0, "function": 6, "arg3": u32(0, 16) + "00" * 8}, INVALID_INPUT),
    "write longer than its length": ({"dimm": 0, "function": 6, "arg3": u32(0, 8) + "00" * 16}, INVALID_INPUT),
    "read with a short input": ({"dimm": 0, "function": 5, "arg3": u32(0)}, INVALID_INPUT),
    "label size on a DIMM without labels": ({"dimm": 1, "function": 4}, NOT_SUPPORTED),
    "label read on a DIMM without labels": ({**label_read(0, 8), "dimm": 1}, NOT_SUPPORTED),
    "label write on a DIMM without labels": ({**label_write(0, bytes(8)), "dimm": 1}, NOT_SUPPORTED),
    "firmware data without an update": ({"dimm": 0, "function": 14, "revision": 2, "arg3": u32(1, 0, 1) + "00"},
                                        0x10007),
    "firmware activation with nothing armed": (
        {"dimm": None, "function": 2, "uuid": str(INTEL_BUS_UUID), "arg3": "01"}, 6 | 1 << 16),
}

UNTRAPPED_CALLS: dict[str, tuple[dict[str, Any], str]] = {
    "wrong UUID, function 4": ({"dimm": 0, "function": 4, "uuid": str(ROOT_UUID)}, u32(NOT_SUPPORTED)),
    "wrong UUID, function 0": ({"dimm": 0, "function": 0, "uuid": str(ROOT_UUID)}, "00"),
    "input over 4080 bytes": ({"dimm": 0, "function": 6, "arg3": "00" * (page.MAX_INPUT + 1)}, u32(INVALID_INPUT)),
}

MASK_CALLS: dict[str, tuple[dict[str, Any], set[int]]] = {
    "DIMM function 0 at revision 2": ({"dimm": 0, "function": 0, "revision": 2},
                                      {0, 12, 13, 14, 15, 16, 17, 18, *range(19, 29), 29, 30}),
    "Intel bus function 0": ({"dimm": None, "function": 0, "uuid": str(INTEL_BUS_UUID)}, {0, 1, 2}),
    "DIMM function 0 at revision 3": ({"dimm": 0, "function": 0, "revision": 3}, set()),
    "root function 0 at revision 2": ({"dimm": None, "function": 0, "revision": 2}, set()),
    "unlabelled DIMM function 0": ({"dimm": 1, "function": 0}, {0, 1, 2, 10}),
    "labelled DIMM function 0": ({"dimm": 0, "function": 0}, {0, 1, 2, 4, 5, 6, 10}),
}

ALL_CALLS = {name: call for name, (call, _) in (BAD_CALLS | UNTRAPPED_CALLS | MASK_CALLS).items()}


@pytest.fixture(scope="module")
def bad_input_run(process_host: ProcessHost, mmio_guest: Path) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Every call above, each followed by a probe, in one guest process: name -> (result, probe)."""
    lines = [line for call in ALL_CALLS.values() for line in (call, PROBE)]
    run = run_script(mmio_guest, lines)
    assert run.returncode == 0, run.stderr
    results = iter(run.results)
    return {name: (next(results), next(results)) for name in ALL_CALLS}


@pytest.mark.parametrize("name", BAD_CALLS)
def test_bad_call_gets_its_exact_status(bad_input_run, name: str) -> None:
    result, _ = bad_input_run[name]
    assert result["status"] == BAD_CALLS[name][1]
    assert result["out"] == u32(BAD_CALLS[name][1])
    assert result["ioreqs"] == planned_ioreqs(ALL_CALLS[name], result)


@pytest.mark.parametrize("name", UNTRAPPED_CALLS)
def test_call_the_aml_refuses_is_answered_without_trapping(bad_input_run, name: str) -> None:
    result, _ = bad_input_run[name]
    assert (result["out"], result["ioreqs"]) == (UNTRAPPED_CALLS[name][1], 0)


@pytest.mark.parametrize("name", MASK_CALLS)
def test_function_0_mask_depends_on_target_and_revision(bad_input_run, name: str) -> None:
    result, _ = bad_input_run[name]
    assert mask(result) == MASK_CALLS[name][1]
    assert result["ioreqs"] == planned_ioreqs(ALL_CALLS[name], result)


def test_daemon_answers_correctly_after_every_bad_input(bad_input_run) -> None:
    probes = {name: probe for name, (_, probe) in bad_input_run.items()}
    expected = u32(STATUS_OK, LABEL_SIZE, MAX_LABEL_TRANSFER)
    assert {name: probe["out"] for name, probe in probes.items()} == {name: expected for name in probes}


def test_label_write_to_a_read_only_backing_file_is_not_supported(process_host: ProcessHost) -> None:
    if shutil.which("chattr") is None:
        pytest.skip("chattr not installed")
    config = process_host.guest_config(5, nvdimms=[LABELLED], name="readonly")
    backing = config.with_name("readonly-nv0.img")
    with open(backing, "r+b") as f:
        f.seek(LABELLED["size"] - LABEL_SIZE)
        f.write(b"L" * 64)
    if subprocess.run(["chattr", "+i", str(backing)], capture_output=True).returncode != 0:
        pytest.skip("cannot make the backing file immutable (needs root and chattr support)")
    try:
        process_host.domain("create", config)
        try:
            process_host.start_daemon(config)
        except AssertionError:
            if any(r.get("step") == "backing-lock" for r in process_host.daemons[-1].log.records):
                pytest.xfail("the backing-lock step refuses an immutable file: BackingLock's holder "
                             "xattr write fails with EPERM (pmemd/storage/lock.py _set_holder)")
            raise
        process_host.domain("unpause", config)
        run = run_script(config, [label_write(0, b"new label"), label_read(0, 64), PROBE])
    finally:
        subprocess.run(["chattr", "-i", str(backing)], check=True)
    assert [r["status"] for r in run.results] == [NOT_SUPPORTED, STATUS_OK, STATUS_OK]
    assert payload(run.results[1]) == b"L" * 64


# -- the script format ----------------------------------------------------------------------

MALFORMED_LINES = [
    "this is not JSON",
    "[1, 2, 3]",
    {"dimm": 0},
    {"dimm": "zero", "function": 0},
    {"dimm": 0, "function": -1},
    {"dimm": 0, "function": 5, "arg3": "not hex"},
    {"dimm": 0, "function": 0, "uuid": "not-a-uuid"},
    {"dimm": 0, "function": 0, "vcpu": 99},
    {"read": -1, "length": 8},
    {"write": DSM_PAGE, "data": "xyz"},
]


def test_malformed_lines_get_an_error_object_and_the_script_goes_on(process_host: ProcessHost, mmio_guest: Path) -> None:
    run = run_script(mmio_guest, [*MALFORMED_LINES, PROBE])
    assert run.returncode == 0
    assert len(run.results) == len(MALFORMED_LINES) + 1
    assert all(set(r) == {"error"} and r["error"] for r in run.results[:-1]), run.results
    assert run.results[-1]["status"] == STATUS_OK


def test_guest_exits_non_zero_when_the_daemon_is_gone(process_host: ProcessHost) -> None:
    config = process_host.guest_config(4, nvdimms=[LABELLED])
    daemon = process_host.start_guest(config)
    assert process_host.sim_log is not None
    mark = process_host.sim_log.mark()
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    process_host.wait_server_destroyed(4, mark)
    run = run_script(config, [PROBE, PROBE])
    assert run.returncode != 0
    assert len(run.results) == 1 and "stopped answering" in run.results[0]["error"]


# -- many vCPUs and many guest processes ------------------------------------------------------


def test_eight_vcpus_with_ioreqs_in_flight_at_once_are_all_completed_uncrossed(
    process_host: ProcessHost, mmio_guest: Path
) -> None:
    """Eight processes, one per vCPU, hammer their own word of the trapped DSM page at once."""
    rounds = 150
    procs = [script_process(mmio_guest) for _ in range(8)]
    for vcpu, proc in enumerate(procs):  # barrier: every vCPU attached and idle before the burst
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(script_text([{"read": DSM_PAGE + 0x800 + 8 * vcpu, "length": 8, "vcpu": vcpu}]))
        proc.stdin.flush()
    for proc in procs:
        assert proc.stdout is not None and "data" in proc.stdout.readline()

    def word(vcpu: int, i: int) -> bytes:
        return bytes([vcpu + 1, i % 256, i // 256, 0xA5, vcpu, 0x5A, 0x77, 0xEE])

    scripts = []
    for vcpu in range(8):
        gpa = DSM_PAGE + 0x800 + 8 * vcpu
        lines: list[Any] = []
        for i in range(rounds):
            lines += [{"write": gpa, "data": word(vcpu, i).hex(), "vcpu": vcpu},
                      {"read": gpa, "length": 8, "vcpu": vcpu}]
        scripts.append(lines)
    runs = run_all(list(zip(procs, scripts)))
    for vcpu, run in enumerate(runs):
        assert run.returncode == 0, run.stderr
        assert run.results[0::2] == [{"ok": True}] * rounds
        assert [r["data"] for r in run.results[1::2]] == [word(vcpu, i).hex() for i in range(rounds)]


def test_dsm_calls_from_several_guest_processes_each_get_their_own_answer(process_host: ProcessHost, mmio_guest: Path) -> None:
    """Four processes interleave label writes and reads; the AML lock keeps each call whole."""
    rounds, size = 12, 96

    def block(proc: int, i: int) -> bytes:
        return bytes([proc * 16 + i % 16]) * (size // 2) + bytes([i, proc]) * (size // 4)

    procs = [script_process(mmio_guest) for _ in range(4)]
    scripts = []
    for p in range(4):
        lines: list[Any] = []
        for i in range(rounds):
            lines += [label_write(0x4000 + p * size, block(p, i), vcpu=p), label_read(0x4000 + p * size, size, vcpu=p)]
        scripts.append(lines)
    runs = run_all(list(zip(procs, scripts)))
    for p, run in enumerate(runs):
        assert run.returncode == 0, run.stderr
        assert [r["status"] for r in run.results[0::2]] == [STATUS_OK] * rounds
        assert [payload(r) for r in run.results[1::2]] == [block(p, i) for i in range(rounds)]
    final = run_script(mmio_guest, [label_read(0x4000, 4 * size)])
    assert payload(final.results[0]) == b"".join(block(p, rounds - 1) for p in range(4))

