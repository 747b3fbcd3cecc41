"""Media errors and health end to end: `pmemd sim`, `pmemd run` and `pmemd guest` processes.

The guest drives ARS, error injection and SMART the way Linux does (reference:
linux-nfit.md §5-8), through the same trapped accesses its AML makes; notifies reach it as
the NVDIMM GPE plus NEVT's register reads (`{"events": true}`), poison as a machine check on
a read. Each test has its own domain and daemon; one simulator serves the module.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from construct import Container

from pmemd import config as configmod
from pmemd.dsm.root_layouts import (
    ARS_START_BUSY,
    ARS_STATUS_BUSY,
    ARS_STATUS_FLAG_OVERFLOW,
    ARS_STATUS_INTERRUPTED,
    ARS_TYPE_PERSISTENT,
    MAX_ARS_OUT,
    MAX_ARS_RECORDS,
    ArsCapInput,
    ArsCapOutput,
    ArsStartInput,
    ArsStatusOutput,
    ClearErrorInput,
    ClearErrorOutput,
    InjectClearInput,
    InjectInput,
    InjectStatusOutput,
)
from pmemd.dsm.smart import InjectSmartInput, SetThresholdInput, SmartBody, ThresholdOutput
from tests.harness.daemon import TIMEOUT
from tests.harness.guest_script import script_process
from tests.harness.host import ProcessHost

KiB, MiB = 1 << 10, 1 << 20
LABEL_SIZE = 128 * KiB
DIMM = {"size": 2 * MiB + LABEL_SIZE, "label_size": LABEL_SIZE, "slot": 0}
PMEM = 2 * MiB
CLEAR_UNIT = 256
OK, INVALID_INPUT = 0, 3
RETURN_PREVIOUS = 0x02
NOTIFY = {"target": "NV00", "value": 0x81}
ROOT_NOTIFY = {"target": "NVDR", "value": 0x81}
MAX_POLLS = 100_000  # ARS status polls before a scrub is declared stuck


class GuestSession:
    """An interactive `pmemd guest`: one script line in, its answer out."""

    def __init__(self, config: Path) -> None:
        self.proc = script_process(config)

    def __call__(self, line: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(line) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        assert answer, f"pmemd guest exited: {self.proc.stderr.read() if self.proc.stderr else ''}"
        return json.loads(answer)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(TIMEOUT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    # -- calls -----------------------------------------------------------------------------

    def root(self, function: int, arg3: bytes = b"") -> dict[str, Any]:
        return self({"dimm": None, "function": function, "arg3": arg3.hex()})

    def dimm(self, function: int, arg3: bytes = b"", revision: int = 1) -> dict[str, Any]:
        return self({"dimm": 0, "function": function, "revision": revision, "arg3": arg3.hex()})

    def ars_start(self, address: int, length: int, flags: int = 0) -> dict[str, Any]:
        return self.root(2, ArsStartInput.build(
            {"range": {"address": address, "length": length}, "type": ARS_TYPE_PERSISTENT, "flags": flags,
             "reserved": [0] * 5}))

    def ars_status(self) -> tuple[int, Container]:
        """(status, parsed output) once the scrub is no longer busy."""
        for _ in range(MAX_POLLS):
            result = self.root(3)
            if result["status"] != ARS_STATUS_BUSY:
                return result["status"], ArsStatusOutput.parse(out(result))
        raise AssertionError("ARS stayed busy")

    def inject(self, address: int, length: int = CLEAR_UNIT, options: int = 0) -> dict[str, Any]:
        return self.root(7, InjectInput.build({"range": {"address": address, "length": length}, "options": options}))

    def clear(self, address: int, length: int = CLEAR_UNIT) -> dict[str, Any]:
        return self.root(4, ClearErrorInput.build({"range": {"address": address, "length": length}}))

    def injected(self) -> list[tuple[int, int]]:
        status = InjectStatusOutput.parse(out(self.root(9)))
        return [(r.address, r.length) for r in status.records]

    def scrub_records(self, address: int, length: int, flags: int = 0) -> list[tuple[int, int]]:
        """Linux's ars_continue loop: start, status, and on overflow start again at the restart point."""
        records: list[tuple[int, int]] = []
        assert self.ars_start(address, length, flags)["status"] == OK
        for _ in range(MAX_POLLS):
            status, body = self.ars_status()
            records += [(r.err_address, r.length) for r in body.records]
            if status != ARS_STATUS_INTERRUPTED:
                assert status == OK
                return records
            assert body.header.flags & ARS_STATUS_FLAG_OVERFLOW
            assert self.ars_start(body.header.restart_address, body.header.restart_length, flags)["status"] == OK
        raise AssertionError("ARS kept overflowing")

    def smart(self) -> Container:
        return SmartBody.parse(out(self.dimm(1)))

    def inject_smart(self, flags: int, **fields: int) -> dict[str, Any]:
        values = {"mtemp_enable": 0, "media_temperature": 0, "spare_enable": 0, "spares": 0,
                  "fatal_enable": 0, "unsafe_shutdown_enable": 0, **fields}
        return self.dimm(18, InjectSmartInput.build({"flags": flags, **values}), revision=2)


def out(result: dict[str, Any]) -> bytes:
    """A successful call's output after its status word."""
    assert result.get("status") in (OK, ARS_STATUS_INTERRUPTED, ARS_STATUS_BUSY), result
    return bytes.fromhex(result["out"])[4:]


def media_guest(process_host: ProcessHost, domid: int, *, scrub_rate: str = "1G") -> tuple[Path, int]:
    """A guest with one labelled 2 MiB DIMM scrubbing at `scrub_rate`; returns (config, PMEM base)."""
    path = process_host.guest_config(domid, nvdimms=[DIMM])
    text = path.read_text().replace('[dsm]\n', f'[dsm]\nscrub_rate = "{scrub_rate}"\n', 1)
    path.write_text(text)
    return path, configmod.load(path).nvdimms[0].address


@pytest.fixture
def session(process_host: ProcessHost) -> Iterator[Any]:
    sessions: list[GuestSession] = []

    def open_session(config: Path) -> GuestSession:
        sessions.append(GuestSession(config))
        return sessions[-1]

    yield open_session
    for s in sessions:
        s.close()


# -- ARS: the flow Linux drives ---------------------------------------------------------------


def test_linux_ars_flow_pages_through_overflow_and_reports_exactly_the_injected_set(process_host: ProcessHost, session) -> None:
    config, base = media_guest(process_host, 11, scrub_rate="2M")  # the whole DIMM scrubs in about a second
    process_host.start_guest(config)
    guest = session(config)
    injected = [(base + i * 4 * KiB + 0x100, CLEAR_UNIT) for i in range(MAX_ARS_RECORDS + 2)]
    for address, length in injected:
        assert guest.inject(address, length)["status"] == OK

    cap = guest.root(1, ArsCapInput.build({"range": {"address": base, "length": PMEM}}))
    assert cap["status"] == ARS_TYPE_PERSISTENT << 16
    caps = ArsCapOutput.parse(out({**cap, "status": OK}))
    assert caps.max_ars_out == MAX_ARS_OUT and caps.clear_err_unit == CLEAR_UNIT

    assert guest.scrub_records(base, PMEM, RETURN_PREVIOUS) == injected  # short ARS
    assert guest.ars_start(base, PMEM)["status"] == OK  # long ARS
    assert guest.ars_start(base, PMEM)["status"] == ARS_START_BUSY  # a second start while it sweeps
    status, first = guest.ars_status()
    assert status == ARS_STATUS_INTERRUPTED and first.header.flags & ARS_STATUS_FLAG_OVERFLOW
    assert first.header.num_records == MAX_ARS_RECORDS
    assert first.header.restart_address == injected[MAX_ARS_RECORDS][0]
    assert first.header.restart_address + first.header.restart_length == base + PMEM
    assert guest.ars_start(first.header.restart_address, first.header.restart_length)["status"] == OK
    status, rest = guest.ars_status()
    assert status == OK and rest.header.flags == 0
    found = [(r.err_address, r.length) for r in [*first.records, *rest.records]]
    assert found == injected
    assert {r.handle for r in [*first.records, *rest.records]} == {1}


def test_ars_outside_the_guests_spa_ranges_is_invalid_input(process_host: ProcessHost, session) -> None:
    config, base = media_guest(process_host, 12)
    process_host.start_guest(config)
    guest = session(config)
    assert guest.ars_start(0x1000_0000, PMEM)["status"] == INVALID_INPUT  # guest RAM, not PMEM
    assert guest.ars_start(base + PMEM - 4 * KiB, 8 * KiB)["status"] == INVALID_INPUT  # runs off the end
    cap = guest.root(1, ArsCapInput.build({"range": {"address": base + PMEM, "length": 4 * KiB}}))
    assert cap["status"] == INVALID_INPUT


# -- error injection ------------------------------------------------------------------------------


def test_injection_round_trip_through_ars_clear_and_inject_clear(process_host: ProcessHost, session) -> None:
    config, base = media_guest(process_host, 13)
    process_host.start_guest(config)
    guest = session(config)
    error = (base + 64 * KiB, CLEAR_UNIT)
    assert guest.inject(*error, options=1)["status"] == OK  # with the notify option
    assert guest({"events": True}) == {"gpes": [4], "notify": [ROOT_NOTIFY]}
    assert guest.injected() == [error]
    assert guest.scrub_records(base, PMEM) == [error]

    assert guest.clear(error[0] + 8, CLEAR_UNIT)["status"] == INVALID_INPUT  # misaligned: nothing cleared
    assert guest.scrub_records(base, PMEM) == [error]
    cleared = guest.clear(*error)
    assert cleared["status"] == OK and ClearErrorOutput.parse(out(cleared)).cleared == CLEAR_UNIT
    assert guest.scrub_records(base, PMEM) == []
    assert guest.injected() == [error]  # clearing the poison does not forget the injection

    assert guest.root(8, InjectClearInput.build({"range": {"address": error[0], "length": error[1]}}))["status"] == OK
    assert guest.injected() == []
    assert guest({"events": True}) == {"gpes": [], "notify": []}


def test_poisoned_page_read_takes_a_machine_check_and_clearing_restores_the_data(process_host: ProcessHost, session) -> None:
    config, base = media_guest(process_host, 14)
    process_host.start_guest(config)
    guest = session(config)
    page = base + 256 * KiB
    before = guest({"read": page, "length": 0x200})
    assert "data" in before, before

    assert guest.inject(page + 0x100)["status"] == OK
    poisoned = guest({"read": page + 0x100, "length": 8})
    assert poisoned["error"].startswith("machine check")
    assert poisoned["mce"] == {"vector": 18, "address": page + 0x100, "length": 8}
    assert guest({"read": page, "length": 0x200})["mce"]["address"] == page + 0x100
    assert guest({"read": page, "length": 0x100}) == {"data": before["data"][:0x200]}  # beside the poison

    assert guest.clear(page + 0x100)["status"] == OK
    assert guest({"read": page, "length": 0x200}) == before


# -- every payload of the wrong length --------------------------------------------------------------


ROOT_INPUTS = {1: 16, 2: 24, 3: 0, 4: 16, 5: 8, 7: 17, 8: 16, 9: 0}
DIMM_INPUTS = {(1, 1): 0, (2, 1): 0, (10, 1): 1, (17, 2): 7, (18, 2): 15}


def test_every_payload_shorter_or_longer_than_its_layout_is_invalid_input(process_host: ProcessHost, session) -> None:
    config, base = media_guest(process_host, 15)
    process_host.start_guest(config)
    guest = session(config)
    for function, size in ROOT_INPUTS.items():
        for length in {size - 1, size + 1} - {-1}:
            result = guest.root(function, bytes(length))
            assert result["status"] == INVALID_INPUT, (function, length, result)
    for (function, revision), size in DIMM_INPUTS.items():
        for length in {size - 1, size + 1} - {-1}:
            result = guest.dimm(function, bytes(length), revision)
            assert result["status"] == INVALID_INPUT, (function, length, result)
    assert guest.injected() == [] and guest.smart().health == 0  # nothing changed


# -- SMART health -----------------------------------------------------------------------------------


def test_smart_defaults_thresholds_and_injected_conditions_with_notify_on_trip(process_host: ProcessHost, session) -> None:
    config, _ = media_guest(process_host, 16)
    process_host.start_guest(config)
    guest = session(config)
    smart = guest.smart()
    assert (smart.health, smart.spares, smart.life_used, smart.alarm_flags) == (0, 100, 0, 0)
    assert (smart.media_temperature, smart.ctrl_temperature) == (23 * 16, 25 * 16)
    assert (smart.shutdown_state, smart.shutdown_count) == (0, 0)

    thresholds = {"alarm_control": 0b11, "spares": 20, "media_temperature": 50 * 16, "ctrl_temperature": 45 * 16}
    assert guest.dimm(17, SetThresholdInput.build({"thresholds": thresholds}), revision=2)["status"] == OK
    assert dict(ThresholdOutput.parse(out(guest.dimm(2))).thresholds, _io=None) == {**thresholds, "_io": None}
    assert guest({"events": True}) == {"gpes": [], "notify": []}  # nothing crossed

    assert guest.inject_smart(1, mtemp_enable=1, media_temperature=60 * 16)["status"] == OK
    smart = guest.smart()
    assert smart.media_temperature == 60 * 16 and smart.alarm_flags == 0b10
    assert guest({"events": True}) == {"gpes": [4], "notify": [NOTIFY]}

    assert guest.inject_smart(2, spare_enable=1, spares=5)["status"] == OK
    assert guest.smart().spares == 5 and guest.smart().alarm_flags == 0b11
    assert guest.inject_smart(4, fatal_enable=1)["status"] == OK
    assert guest.smart().health & 0b100
    assert guest.inject_smart(8, unsafe_shutdown_enable=1)["status"] == OK
    assert (guest.smart().shutdown_state, guest.smart().shutdown_count) == (1, 1)

    assert guest.inject_smart(0b1111)["status"] == OK  # every condition lifted (enables 0)
    smart = guest.smart()
    assert (smart.media_temperature, smart.spares, smart.health, smart.alarm_flags) == (23 * 16, 100, 0, 0)
    assert (smart.shutdown_state, smart.shutdown_count) == (0, 1)


# -- state across daemon restarts ---------------------------------------------------------------------


def test_health_and_poison_persist_and_a_kill_9_counts_a_dirty_shutdown(process_host: ProcessHost, session) -> None:
    config, base = media_guest(process_host, 17)
    daemon = process_host.start_guest(config)
    thresholds = {"alarm_control": 0b01, "spares": 30, "media_temperature": 55 * 16, "ctrl_temperature": 44 * 16}
    error = (base + 128 * KiB, CLEAR_UNIT)
    with_guest = session(config)
    assert with_guest.dimm(17, SetThresholdInput.build({"thresholds": thresholds}), revision=2)["status"] == OK
    assert with_guest.inject(*error)["status"] == OK
    with_guest.close()

    assert daemon.stop(signal.SIGTERM) == 0
    daemon = process_host.start_daemon(config)
    guest = session(config)
    assert dict(ThresholdOutput.parse(out(guest.dimm(2))).thresholds, _io=None) == {**thresholds, "_io": None}
    assert guest.scrub_records(base, PMEM, RETURN_PREVIOUS) == [error]
    assert (guest.smart().shutdown_state, guest.smart().shutdown_count) == (0, 0)
    assert guest({"read": error[0], "length": 8})["error"].startswith("machine check")  # poison republished

    assert process_host.sim_log is not None
    mark = process_host.sim_log.mark()
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    process_host.wait_server_destroyed(17, mark)
    process_host.start_daemon(config)
    smart = guest.smart()
    assert (smart.shutdown_state, smart.shutdown_count) == (1, 1)
    assert dict(ThresholdOutput.parse(out(guest.dimm(2))).thresholds, _io=None) == {**thresholds, "_io": None}
